"""The demo: a synthetic model family through `diff`, `apply` and `transfer`, end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks import deltas
from tasks.checkpoints import differing_tensors, open_model_folder
from tasks.synthetic import FamilySpec, build_family

DEMO_SPEC = FamilySpec(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8)


def run_demo(*, data_dir: Path, say: Callable[[str], None], describe: Callable[[deltas.DeltaSummary], str]) -> bool:
    """Build (or reuse) the demo family under `data_dir` and run the engine on it.

    Returns:
        Whether apply(diff(m', m), m) gave m' back bit for bit.
    """
    root = data_dir / "demo"
    fresh = not (root / "family" / "target" / "config.json").is_file()
    size = f"{DEMO_SPEC.params / 1e6:.1f} M parameters, bf16"
    say(f"{'Building' if fresh else 'Reusing'} a synthetic Llama family ({size}) in {root / 'family'}")
    family = build_family(root / "family", spec=DEMO_SPEC, seed=0)
    steps = [
        lambda: deltas.diff(finetuned=family["finetuned"], base=family["base"], out=root / "diff", overwrite=True),
        lambda: deltas.apply(diff=root / "diff", target=family["base"], out=root / "roundtrip", overwrite=True),
        lambda: deltas.transfer(
            finetuned=family["finetuned"],
            base=family["base"],
            target=family["target"],
            out=root / "recycled",
            overwrite=True,
        ),
    ]
    for step in steps:
        say(describe(step()))
    bad = differing_tensors(open_model_folder(root / "roundtrip"), open_model_folder(family["finetuned"]))
    say("apply(diff(m', m), m) == m' bit for bit: " + ("yes" if not bad else f"NO, {len(bad)} tensors differ"))
    return not bad
