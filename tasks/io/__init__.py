"""Model and diff folders on disk: safetensors headers and memory-mapped reads, sharded writes, model
and diff folders, tokenizer files and the lossless codec of the blob store. Formats and atomic
outputs only: no arithmetic."""
