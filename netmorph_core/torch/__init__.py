"""PyTorch adapter: morph real ``nn.Module`` networks with their function preserved.

Every operation returns ``(child, report)``: the child is a new model (the parent is deep-copied,
never modified; the transformer operations' ``inplace=True`` consumes it instead) and the
:class:`MorphReport` gives the measured parent-vs-child deviation, parameter counts, the
solver's residual and the non-zero ratio of the new weights. Every operation runs the same
steps (:mod:`.pipeline`: resolve, support, probe, build, measure, accept), ``tol="auto"`` by
default; models above 50M parameters are measured in float64 one module at a time
(:mod:`.streamed`), never through float64 copies of the whole model.

- :func:`deepen` — a layer becomes F1 → [BN] → PActivation(a = 1) → F2 (F2 ⊛ F1 = G~).
- :func:`widen` — more output channels; consumers found with torch.fx are updated.
- :func:`grow_kernel` — a larger, zero-padded kernel.
- :func:`morph_subnet` / :func:`morph_stacked` — a sequential subnet / summed parallel branches.
- :func:`morph_module` — a layer becomes a module graph (:class:`MorphedModule`).
- :class:`PActivation` — (1 − a)·φ(x) + a·x; :func:`remap_optimizer` — carry optimizer state.
- :func:`register_same_padding_conv` — declare a TF-style dynamic "same" padding conv class
  (timm's Conv2dSame is recognised) so the morphs keep its rule exactly (:class:`DynamicSamePad`).
- Transformers (:mod:`.transformer`): :func:`grow_ffn`, :func:`add_heads`, :func:`grow_width`,
  :func:`add_block`, :func:`deepen_projection`, :func:`conv1d_to_linear`; :func:`trace_model`
  graphs Hugging Face models through torch.export.
- Hierarchical vision transformers (:mod:`.hierarchical`: SegFormer, PVT-v2): the same
  operations per stage (``stage=``, or ``layers`` as global block indices).
- Mixtures of experts (:mod:`.moe`): :func:`grow_ffn` grows every expert, :func:`add_experts`,
  :func:`upcycle` (a dense Llama/Mistral/Qwen2 → the equivalent Mixtral/Qwen2-MoE).

Layers the adapter does not understand (overridden forward, parents that read their parameters,
hooks, parametrizations, tied weights, quantised layers, LoRA wrappers, pruning, TorchScript)
are refused by name: see :mod:`.support` and :mod:`.wrappers`.

Saving a child: a Hugging Face child's config is kept describing it (:mod:`.hf_config`), so
``save_pretrained`` → ``from_pretrained`` reloads it; where no config can describe it the stock
load refuses it and :func:`load_grown` rebuilds it. Any child: ``torch.save(child)``.

Importing this subpackage imports torch; ``import netmorph_core`` does not. Where PyPI's
torchvision cannot load its compiled operators with a CPU torch, importing it first makes
torchvision, timm and transformers importable (:mod:`.torchvision_ops`).
"""

from .activation import PActivation
from .depth import deepen
from .errors import MorphError
from .hf_load import load_grown
from .hierarchical import add_block, add_heads, grow_ffn, grow_width
from .kernel import grow_kernel
from .module import MorphedModule, morph_module
from .moe import add_experts, upcycle
from .optim import remap_optimizer
from .report import MorphReport, ParamSource
from .samepad import DynamicSamePad, register_same_padding_conv
from .subnet import StackedBranches, morph_stacked, morph_subnet
from .torchvision_ops import declare_missing_operators
from .tracing import trace_model
from .transformer import conv1d_to_linear, deepen_projection
from .width import widen

declare_missing_operators()

__all__ = [
    "DynamicSamePad",
    "MorphError",
    "MorphReport",
    "MorphedModule",
    "PActivation",
    "ParamSource",
    "StackedBranches",
    "add_block",
    "add_experts",
    "add_heads",
    "conv1d_to_linear",
    "deepen",
    "deepen_projection",
    "grow_ffn",
    "grow_kernel",
    "grow_width",
    "load_grown",
    "morph_module",
    "morph_stacked",
    "morph_subnet",
    "register_same_padding_conv",
    "remap_optimizer",
    "trace_model",
    "upcycle",
    "widen",
]
