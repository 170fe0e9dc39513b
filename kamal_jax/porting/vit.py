"""Rule table for torchvision's VisionTransformer.

Module paths: `encoder.layers.encoder_layer_i.*` -> `backbone/encoder_layer_i/*`, the MLP's
Sequential indices `mlp.0`/`mlp.3` -> `mlp_0`/`mlp_3`, `encoder.ln` -> `backbone/ln`, `heads.head`
-> `fc`. Leaves the generic rules do not know: `class_token` and `encoder.pos_embedding`
(copied as is) and `nn.MultiheadAttention`'s fused `in_proj_weight`/`in_proj_bias` (q, k, v
stacked along the output axis; the Flax `in_proj` Dense keeps them fused, so the weight is only
transposed and the q/k/v split happens in the forward pass). LayerNorm weights are 1-D and so
become `scale` under the generic rule.

The position embedding must be for the module's `image_size` (224 for vit_b_16, 32 for
vit_tiny_4); inputs of another size are handled at run time by interpolating it.
"""

RENAMES = (
    (r'^encoder/layers/(encoder_layer_\d+)/mlp/(\d+)$', r'backbone/\1/mlp_\2'),
    (r'^encoder/layers/(encoder_layer_\d+)', r'backbone/\1'),
    (r'^encoder/ln$', r'backbone/ln'),
    (r'^conv_proj$', r'backbone/conv_proj'),
    (r'^heads/head$', r'fc'),
)
HEAD_KEY = 'heads.head.weight'


def vit_leaf(path: str, leaf: str, value):
    if leaf in ('class_token', 'pos_embedding') and path in ('', 'encoder'):
        return ('params', 'backbone', leaf), value
    if leaf == 'in_proj_weight':
        return ('params',) + tuple(p for p in path.split('/') if p) + ('in_proj', 'kernel'), value.T
    if leaf == 'in_proj_bias':
        return ('params',) + tuple(p for p in path.split('/') if p) + ('in_proj', 'bias'), value
    return None


LEAF_RULES = (vit_leaf,)
