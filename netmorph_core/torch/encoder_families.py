"""Where the parts of Hugging Face ModernBERT and DeBERTa(-v2) models live.

Each entry holds the keyword arguments of a :class:`~.transformer_layout.Family` (names relative
to a block or to the stream's owner); :mod:`.transformer_layout` adds them to its table. They
are plain data so that this module imports nothing of the layout.

- ``modernbert``: pre-LayerNorm blocks ``layers[i]`` with ``attn_norm`` (an ``nn.Identity`` in
  block 0: the embedding norm's output enters its attention directly), one fused ``attn.Wqkv``
  of rows [Q; K; V] (rotary; global and sliding-window attention alternate per block, recorded
  in ``config.layer_types``), ``attn.Wo``, ``mlp_norm``, one fused ``mlp.Wi`` of rows
  [input; gate] (act(input)·gate) and ``mlp.Wo``; ``embeddings.tok_embeddings`` normalised by
  ``embeddings.norm``; ``final_norm``; the output head ``head`` (dense → act → norm) before the
  tied ``decoder`` or the ``classifier``. Its LayerNorms may have no bias.
  ``modernbert-decoder``: ModernBERT's causal decoder, the same blocks with separate
  ``attn.{q,k,v}_proj``.
- ``deberta-v2``: post-LayerNorm blocks like BERT's with ``attention.self.{query,key,
  value}_proj`` and disentangled relative attention: the table ``encoder.rel_embeddings``
  (2·buckets × d, the stream's width, normalised by ``encoder.LayerNorm`` when
  ``norm_rel_ebd="layer_norm"``) is read by every block through ``pos_key_proj``/
  ``pos_query_proj`` (rows per head) or, with ``share_att_key``, through the key and query
  projections themselves. Its config records head_dim as ``attention_head_size``. The
  convolution ``encoder.conv`` (``conv_kernel_size`` > 0) and the masked-LM head
  ``lm_predictions`` (which reads the word embedding's weight in its forward) keep the width.
- ``deberta``: DeBERTa (v1), the same blocks and table (no table norm) with one fused
  ``attention.self.in_proj`` of rows [q_h; k_h; v_h] per head and the per-head biases
  ``q_bias``/``v_bias``; its position projections are ``pos_proj``/``pos_q_proj``.

MPNet is found by structure (:mod:`.transformer_trace`): its post-LN blocks are BERT's, and its
relative attention bias ``encoder.relative_attention_bias`` (buckets × heads, added to every
block's scores) is grown per head like BEiT's tables.
"""

from __future__ import annotations


def _modernbert(name: str, qkv: tuple[str, ...]) -> dict[str, object]:
    return dict(
        name=name,
        blocks="layers",
        attention="attn",
        qkv=qkv,
        o="attn.Wo",
        ffn_in=("mlp.Wi",),
        ffn_out="mlp.Wo",
        norms=("attn_norm", "mlp_norm"),
        writers=("embeddings.tok_embeddings",),
        final_norm="final_norm",
        stream_norms=("embeddings.norm",),
        derived_head_dim=True,
        qkv_layout="concat",
        gate_up=True,
        head="head",
    )


ENCODER_FAMILIES: tuple[dict[str, object], ...] = (
    _modernbert("modernbert", ("attn.Wqkv",)),
    _modernbert("modernbert-decoder", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    dict(
        name="deberta-v2",
        blocks="encoder.layer",
        attention="attention.self",
        qkv=(
            "attention.self.query_proj",
            "attention.self.key_proj",
            "attention.self.value_proj",
        ),
        o="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
        writers=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
            "encoder.rel_embeddings",
        ),
        final_norm=None,
        stream_norms=("embeddings.LayerNorm", "encoder.LayerNorm"),
        readers=("pooler.dense",),
        post_ln=True,
        head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
        side_inputs=("encoder.rel_embeddings",),
        fixed_width=("encoder.conv", "lm_predictions"),
        head_dim_field="attention_head_size",
        pooled_head=True,
    ),
    dict(
        name="deberta",
        blocks="encoder.layer",
        attention="attention.self",
        qkv=("attention.self.in_proj",),
        o="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
        writers=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
            "encoder.rel_embeddings",
        ),
        final_norm=None,
        stream_norms=("embeddings.LayerNorm",),
        readers=("pooler.dense",),
        post_ln=True,
        derived_head_dim=True,
        qkv_layout="grouped",
        head_rows=(
            "attention.self.pos_proj",
            "attention.self.pos_q_proj",
            "attention.self.q_bias",
            "attention.self.v_bias",
        ),
        side_inputs=("encoder.rel_embeddings",),
        fixed_width=("lm_predictions",),
        pooled_head=True,
    ),
)
