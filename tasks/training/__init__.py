"""Fine-tuning: a recipe run on a model folder, in this process or under `accelerate launch` on
several GPUs, writing a model folder in the base's dtype."""
