"""The trainer: gin-configured, mesh-sharded training of the models/ families on data/ corpora.

Modules: config (TrainConfig, MeshConfig), partitioning (mesh, logical rules, parameter and optimizer
state shardings incl. Adafactor's factored state), optimizers (Adam/AdamW/Adafactor, Kaplan eq. D.1,
schedules), checkpointing (orbax), eval (loss, bits/byte, loss per position), metrics (jsonl,
TensorBoard, progress), mfu (peak FLOPs), trainer (the loop; ``train`` and ``train_from_gin``).
Import ``scaling.train.trainer`` for the loop; this package's __init__ stays import-light.
"""
