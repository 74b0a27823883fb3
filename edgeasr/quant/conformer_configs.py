"""Quantize configs for the Conformer's own layers (edgeasr/models/conformer.py).

The Conformer's other sublayers are stock Keras layers whose configs are built in (registry.py):
Dense (projections, GLU halves, pointwise convs: weights + output), Conv2D + ReLU (subsampling),
DepthwiseConv2D + BatchNormalization (folded by quantize_model), Activation swish (output) and
sigmoid (fixed scale), Multiply (GLU product) and Add (residuals): output, Softmax, Reshape,
Permute, ZeroPadding2D, Dropout: nothing.

    LayerNorm   output: the normalised, scaled tensor gets its own range; gamma and beta stay
                float in the Keras model and become the int8 constants of a MUL and an ADD
                (their ranges are their own values), so there is no weight fake-quant
    Scale       output (a MUL by ½ halves the range)
    MatMul      output: attention scores and context, the BATCH_MATMUL results
    ChunkMask   output: scores shifted to span [MASKED_SCORE, 0]; softmax follows
"""
from edgeasr.models import conformer
from edgeasr.quant import registry


def register() -> None:
    for cls in (conformer.LayerNorm, conformer.Scale, conformer.MatMul, conformer.ChunkMask):
        registry.register_quantize_config(cls, registry.output_factory)


register()
