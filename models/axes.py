"""Logical axis names used by every model family, and the default rules that map them to the mesh.

Parameters and activations have *separate* logical names (the MaxText Linen idiom): parameter
sharding (FSDP / tensor parallel) and activation sharding (data parallel, sequence) are then set
independently in one table. The mesh always has the three axes ``('data', 'fsdp', 'tensor')``;
an axis of size 1 is free, so the same rules serve 1 CPU device and a pod.
"""

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes.
EMBED = "embed"          # d_model
MLP = "mlp"              # d_ff
HEADS = "heads"          # attention heads
KV = "kv"                # per-head dimension d_attn / n_heads
VOCAB = "vocab"          # vocabulary rows of the (un)embedding
POSITION = "position"    # learned positions, n_ctx
LAYERS = "layers"        # stacked layer axis created by nn.scan
GATES = "gates"          # the 4 LSTM gates
NORM = "norm"            # LayerNorm scale/bias (d_model), kept replicated

# Activation axes.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_VOCAB = "activation_vocab"

PARAM_AXES = (EMBED, MLP, HEADS, KV, VOCAB, POSITION, LAYERS, GATES, NORM)
ACTIVATION_AXES = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS, ACT_KV, ACT_VOCAB)

# One table, logical name -> mesh axis (or tuple of mesh axes, or None = replicated).
# Weights: FSDP shards d_model; tensor parallel shards the "wide" dims (mlp, heads, vocab).
# Activations: the batch is split over every data-like axis (data and fsdp); hidden dims
# that are tensor-sharded in the weights are tensor-sharded in the activations too.
DEFAULT_RULES = (
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV, None),
    (VOCAB, "tensor"),
    (POSITION, None),
    (LAYERS, None),
    (GATES, None),
    (NORM, None),
    (ACT_BATCH, ("data", "fsdp")),
    (ACT_LENGTH, None),
    (ACT_EMBED, None),
    (ACT_MLP, "tensor"),
    (ACT_HEADS, "tensor"),
    (ACT_KV, None),
    (ACT_VOCAB, "tensor"),
)
