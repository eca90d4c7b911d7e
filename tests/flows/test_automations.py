"""The example automation the README documents is one Prefect accepts: it parses as an automation, its trigger
expects the event Graftwork emits, and the test's Prefect server creates it."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import yaml
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from graftwork.operations import events

EXAMPLE = Path(__file__).parents[2] / "deployments" / "automations" / "notify-approval.yaml"


def test_the_example_automation_is_created_on_a_prefect_server(prefect_server: None) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["actions"][0]["block_document_id"] = str(uuid4())  # what the file asks a team to fill in
    automation = AutomationCore.model_validate(data)
    assert automation.trigger.expect == {events.APPROVAL_REQUESTED}  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        created = client.create_automation(automation)
        try:
            assert client.read_automation(created).name == "graftwork-approval-requested"  # type: ignore[union-attr]
        finally:
            client.delete_automation(created)
