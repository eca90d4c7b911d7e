"""An example of a team's own trainer for `finetune.command`: supervised fine-tuning with TRL's SFTTrainer.

    python trl_sft.py --model START --data train.jsonl --out OUTPUT [--steps 50] [--learning-rate 1e-3]

It reads prompt/completion pairs (one JSON object per line: TRL puts the loss on the completion only) or chat
`messages`, trains START for a fixed number of steps and saves the model in OUTPUT, as Graftwork's command
contract asks: a model folder of START's architecture (or, with --lora, a peft adapter, which Graftwork merges).
A track runs it with::

    finetune:
      data: train.jsonl
      command:
        argv: [python, trl_sft.py, --model, "{start}", --data, "{data}", --out, "{output}", --steps, "50"]
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the start model's folder ({start})")
    parser.add_argument("--data", required=True, help="a JSONL file of prompt/completion pairs or messages ({data})")
    parser.add_argument("--out", required=True, help="the folder to save the trained model in ({output})")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of every weight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)  # fp32 masters
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=args.out,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=min(10, args.steps // 5),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # autocast on a GPU; fp32 on the CPU
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=load_dataset("json", data_files=args.data, split="train"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(args.out)
    trainer.save_state()  # trainer_state.json: Graftwork reads the loss curve from it


if __name__ == "__main__":
    main()
