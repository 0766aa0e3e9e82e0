"""What a transformer's residual stream is written by and what it runs on, found by structure.

- :func:`find_stack`: the first ``ModuleList`` of blocks of one class holding two or more
  linear layers, and the stream's owner: the smallest module above it that also holds
  something else (the embeddings: ``vit`` for ``vit.encoder.layer``).
- :func:`probe_inputs`: the model's own input kind, one example: token ids (1, 8) below the
  token embedding's size; a Hugging Face model's configured images or mel features
  (:func:`.tracing.default_inputs`); else images (1, C, S, S) for a patch convolution of C
  input channels, S from an ``image_size``/``img_size`` attribute of the model, one of its
  modules or its config (timm's ``patch_embed.img_size``).
- :func:`stream_writers`: where no token embedding writes the stream (vision and audio
  encoders), the writers are the last linear layer or convolution of output width d that runs
  before block 0 (a patch projection; Whisper's second convolution), else the last of width 2d
  (Speech2Text's last subsampling convolution, whose GLU halves it), the embeddings of width d
  (position tables), position tables of width d held as buffers by a module without
  parameters (Speech2Text's sinusoidal positions: :func:`buffer_table`) and the owner's
  parameters of last axis d held outside any layer (class, distillation, register and mask
  tokens, position parameters). :func:`check_writers` proves the set complete: with every
  writer's parameters zero the stream entering the first block (or its first norm) is
  exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import MorphError
from .hf_embeddings import input_embedding
from .linear_view import as_matrix, is_conv1d
from .tracing import default_inputs

PROBE_TOKENS = 8
#: Attributes that give the square image size a patch embedding expects.
IMAGE_SIZE_ATTRS = ("image_size", "img_size")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def find_stack(model: nn.Module) -> tuple[str, str] | None:
    """(owner, list name relative to it) of the first ModuleList (else Sequential: timm's
    ``blocks``) of blocks of one class with two or more linear layers each — where several
    are, the first whose owner holds the model's token embedding (a vision-language model's
    language model, not its vision tower); None when the model has none."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    lists += [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]
    found = []
    for name, blocks in lists:
        if len(blocks) == 0:
            continue
        if len({type(b) for b in blocks}) != 1:
            continue
        if sum(is_linear(m) for m in blocks[0].modules()) < 2:
            continue
        parts = name.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            owner = ".".join(parts[:cut])
            module = model.get_submodule(owner) if owner else model
            if cut == 0 or _holds_more(module, parts[cut]):
                found.append((owner, ".".join(parts[cut:])))
                break
    embed = input_embedding(model) if len(found) > 1 else None
    where = next((n for n, m in model.named_modules() if m is embed), None) if embed else None
    reading = [f for f in found if where is not None and f[0] and where.startswith(f[0] + ".")]
    return (reading or found or [None])[0]


def _holds_more(module: nn.Module, child: str) -> bool:
    """Whether ``module`` holds, outside its child ``child``, a parameter of its own or a
    module that could write a stream (an embedding, a convolution, a holder of parameters
    outside any layer): a final norm alone does not make the stream's owner."""
    if any(True for _ in module.parameters(recurse=False)):
        return True
    return any(
        n != child and any(_writes(m) for m in sub.modules()) for n, sub in module.named_children()
    )


def _writes(module: nn.Module) -> bool:
    if isinstance(module, (nn.Embedding, *CONVS)):
        return True
    return not _is_layer(module) and any(True for _ in module.parameters(recurse=False))


def token_embedding(model: nn.Module, root: nn.Module) -> nn.Embedding | None:
    """The token embedding the model reads its input ids with (None for a model whose input
    is no token ids: ``main_input_name`` names pixel values or audio features)."""
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        return None
    embed = input_embedding(model)
    if not isinstance(embed, nn.Embedding):
        embed = next((m for m in root.modules() if isinstance(m, nn.Embedding)), None)
    return embed


def probe_inputs(model: nn.Module, root: nn.Module) -> tuple[torch.Tensor, ...]:
    """One example of the model's own input kind (module docstring); MorphError when none is
    known."""
    embed = token_embedding(model, root)
    if embed is not None:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, embed.num_embeddings, (1, PROBE_TOKENS), generator=gen)
        return (ids.to(embed.weight.device),)
    found = default_inputs(model)
    if found is not None:
        return tuple(t[:1] for t in found)
    conv = next((m for m in root.modules() if isinstance(m, nn.Conv2d)), None)
    size = image_size(model)
    if conv is None or size is None:
        name = getattr(model, "main_input_name", None)
        runs_on = f" (it runs on {name!r}, which its config does not describe)" if name else ""
        raise MorphError(
            f"{type(model).__name__} has no token embedding (nn.Embedding) and no patch "
            "convolution with a known image size (an image_size or img_size attribute): what "
            f"it runs on is not known{runs_on}; refused"
        )
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, conv.in_channels, *size, generator=gen)
    return (image.to(conv.weight.device, conv.weight.dtype),)


def image_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) from the first ``image_size``/``img_size`` of the config or of a module."""
    holders = [getattr(model, "config", None), *model.modules()]
    for holder in holders:
        for attr in IMAGE_SIZE_ATTRS:
            value = getattr(holder, attr, None)
            if isinstance(value, int):
                return value, value
            if isinstance(value, (tuple, list)) and len(value) == 2:
                if all(isinstance(v, int) for v in value):
                    return int(value[0]), int(value[1])
    return None


def _width(module: nn.Module) -> int | None:
    """The width a layer writes: an embedding's columns, a linear layer's or convolution's
    outputs."""
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    if is_linear(module):
        return as_matrix(module).shape[0]
    if isinstance(module, CONVS):
        return module.out_channels
    return None


def _inside(name: str, blocks: str) -> bool:
    return name == blocks or name.startswith(blocks + ".")


def writer_candidates(root: nn.Module, blocks: str) -> dict[str, nn.Module]:
    """Layers of the owner outside the blocks that could write the stream (embeddings, linear
    layers, convolutions) and the modules that hold parameters of their own outside any layer
    (the class token's holder), keyed by name relative to the owner."""
    found = {}
    for name, module in root.named_modules():
        if _inside(name, blocks):
            continue
        if _width(module) is not None or (
            not _is_layer(module) and any(True for _ in module.parameters(recurse=False))
        ):
            found[name] = module
        elif buffer_table(module) is not None:
            found[name] = module
    return found


def buffer_table(module: nn.Module) -> str | None:
    """The name of the floating buffer (positions, width) of a module that holds no
    parameter: a table computed from the config rather than learned (Speech2Text's
    sinusoidal positions, ``weights``); None for any other module."""
    if any(True for _ in module.parameters()):
        return None
    buffers = module.named_buffers(recurse=False)
    return next((n for n, b in buffers if b.dim() == 2 and b.is_floating_point()), None)


def owner_tables(root: nn.Module, d: int) -> tuple[str, ...]:
    """The floating buffers (positions, d) ``root`` holds itself: position tables computed
    from the config (CTRL's sinusoidal ``pos_encoding``), writers where the others alone do
    not account for the stream."""
    return tuple(
        n
        for n, b in root.named_buffers(recurse=False)
        if b.dim() == 2 and b.shape[-1] == d and b.is_floating_point()
    )


def _is_layer(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return _width(module) is not None or isinstance(w, torch.Tensor)


def stream_writers(
    root: nn.Module, started: list[str], d: int, embed: nn.Embedding | None
) -> tuple[str, ...]:
    """The writers (module docstring) among ``started``: the candidates of
    :func:`writer_candidates` that began running before block 0, in that order. A token
    embedding comes first, followed by the other embeddings of its width or of d."""
    if embed is not None:
        e = embed.embedding_dim
        names = [
            n
            for n in started
            if isinstance(root.get_submodule(n) if n else root, nn.Embedding)
            and (root.get_submodule(n) is embed or root.get_submodule(n).embedding_dim in (e, d))
        ]
        names.sort(key=lambda n: root.get_submodule(n) is not embed)
        return tuple(names)
    layers = []
    gated = []  # of width 2d: a GLU halves its outputs (Speech2Text's last convolution)
    params = []
    for name in started:
        module = root.get_submodule(name) if name else root
        width = _width(module)
        table = buffer_table(module)
        if width == d and not isinstance(module, nn.Embedding):
            layers = [name]  # the last one to run: earlier ones feed it
        elif width == 2 * d and not isinstance(module, nn.Embedding):
            gated = [name]
        elif width == d:
            params.append(name)
        elif table is not None and module.get_buffer(table).shape[-1] == d:
            params.append(name)
        elif width is None:
            params += [
                f"{name}.{p}" if name else p
                for p, t in module.named_parameters(recurse=False)
                if t.dim() >= 1 and t.shape[-1] == d
            ]
    return (*(layers or gated), *params)


def zeroed(root_prefix: str, root: nn.Module, writers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Zero tensors for every parameter of ``writers`` (a buffer table's buffer: its only
    tensor; qualified from the model's root): one zero expanded to each shape, so an
    embedding table costs no memory."""
    return {
        k: t.new_zeros(()).expand(t.shape)
        for k, t in writer_tensors(root_prefix, root, writers).items()
    }


def writer_tensors(
    root_prefix: str, root: nn.Module, writers: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Every parameter of ``writers`` (a buffer table's buffer: its only tensor), qualified
    from the model's root."""
    out = {}
    for name in writers:
        owner, _, attr = name.rpartition(".")
        holder = root.get_submodule(owner) if owner else root
        obj = getattr(holder, attr)
        table = None if isinstance(obj, torch.Tensor) else buffer_table(obj)
        tensors = (
            {attr: obj}
            if isinstance(obj, torch.Tensor)
            else {table: obj.get_buffer(table)}
            if table
            else dict(obj.named_parameters())
        )
        for rel, t in tensors.items():
            local = f"{name}.{rel}" if not isinstance(obj, torch.Tensor) else name
            qualified = f"{root_prefix}.{local}" if root_prefix else local
            out[qualified] = t
    return out


class NoWriterError(MorphError):
    """No layer or parameter of the stream's owner writes the stream: the module found as the
    owner holds the blocks beside a table they read (RoFormer's sinusoidal positions), and the
    writers sit in a module above it."""


def check_writers(
    run: Callable[[dict[str, torch.Tensor]], torch.Tensor | None],
    root_prefix: str,
    root: nn.Module,
    writers: tuple[str, ...],
    where: str,
) -> None:
    """MorphError unless the stream entering the blocks is exactly zero with every writer's
    parameters zero: ``run(parameters)`` returns that tensor for a run with those
    parameters replaced."""
    if not writers:
        raise NoWriterError(f"no layer or parameter writes the stream entering {where!r}; refused")
    entry = run(zeroed(root_prefix, root, writers))
    if entry is None or torch.count_nonzero(entry) != 0:
        raise MorphError(
            f"the stream entering {where!r} is not written by {', '.join(writers)} alone (with "
            "their parameters zero it is not zero): another writer is not understood; refused"
        )


def entry_is_linear(
    run: Callable[[dict[str, torch.Tensor]], torch.Tensor | None],
    root_prefix: str,
    root: nn.Module,
    writers: tuple[str, ...],
) -> bool:
    """Whether the stream entering the blocks is linear in the parameters of its writers other
    than embedding tables (layers, tokens, position parameters: small): with them zero, as
    they are and doubled, the entry e₀, e₁, e₂ has e₂ − 2e₁ + e₀ = 0 (to 1e-9 relative;
    doubling is exact in floating point). Not where an activation follows a writer (Whisper's
    gelu(conv2(x)) + positions). A token embedding's table is never copied."""
    layers = tuple(
        w for w in writers if not isinstance(_resolve_writer(root, w), (nn.Embedding, type(None)))
    )
    if not layers:
        return True
    tensors = writer_tensors(root_prefix, root, layers)
    e0 = run({k: t.new_zeros(()).expand(t.shape) for k, t in tensors.items()})
    e1 = run({})
    e2 = run({k: t.detach() * 2 for k, t in tensors.items()})
    if e0 is None or e1 is None or e2 is None:
        return False
    e0, e1, e2 = (e.detach() for e in (e0, e1, e2))
    scale = float((e1 - e0).abs().max()) or 1.0
    return float((e2 - 2 * e1 + e0).abs().max()) <= 1e-9 * scale


def _resolve_writer(root: nn.Module, name: str) -> object:
    """The module or tensor a writer name (relative to ``root``) stands for."""
    owner, _, attr = name.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attr, None)


#: Mean pooling may leave out this many leading tokens (a class token, registers).
MEAN_SKIPS = 8


def _token_mean(z: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether ``z`` (B, d) or (B, 1, d) is the mean of the stream ``t`` (B, T, d) over its
    tokens from some s ≤ :data:`MEAN_SKIPS` on (BEiT's pooler: the patches, not the class
    token; relative error ≤ 1e-5)."""
    if t.dim() != 3 or z.numel() != t.shape[0] * t.shape[2]:
        return False
    target = z.detach().reshape(t.shape[0], t.shape[2]).double()
    scale = max(float(torch.linalg.norm(target)), 1e-30)
    stream = t.detach().double()
    for skip in range(min(MEAN_SKIPS, t.shape[1] - 1) + 1):
        mean = stream[:, skip:].mean(1)
        if float(torch.linalg.norm(mean - target)) <= 1e-5 * scale:
            return True
    return False


def _token_rows(z: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether every row of ``z`` (…, d) is one of ``rows`` (m, d), bitwise up to 1e-12
    relative: tokens gathered by index (CLIP's text tower reads each sequence's end token)."""
    target = z.detach().reshape(-1, z.shape[-1]).double()
    if target.shape[0] == 0 or rows.shape[0] == 0:
        return False
    scale = max(float(rows.norm(dim=1).max()), 1e-30)
    dist = torch.cdist(target, rows, compute_mode="donot_use_mm_for_euclid_dist")
    return bool((dist.min(dim=1).values <= 1e-12 * scale).all())


def on_stream(z: torch.Tensor | None, streams: list[torch.Tensor]) -> bool:
    """Whether ``z`` (…, d) is read off the stream: a view of one of ``streams`` (BERT's
    pooler reads the first token), the mean of one's tokens (mean pooling), tokens gathered
    from them by index, or, where the tokens recorded are fewer than d, rows that are
    combinations of the streams' rows (relative error ≤ 1e-5). Anything computed from the
    stream by a layer (an attention pooling head) is not."""
    if z is None or not streams or z.shape[-1] != streams[0].shape[-1]:
        return False
    ptr = z.untyped_storage().data_ptr()
    if any(ptr == t.untyped_storage().data_ptr() for t in streams):
        return True
    if any(_token_mean(z, t) for t in streams):
        return True
    rows = torch.cat([t.detach().reshape(-1, t.shape[-1]) for t in streams]).double()
    if _token_rows(z, rows):
        return True
    if rows.shape[0] >= rows.shape[1]:
        return False  # every row would be a combination: undecided
    target = z.detach().reshape(-1, z.shape[-1]).double()
    # gelsd (SVD): the rows are rank-deficient (normalised tokens, or equal ones), where the
    # default QR driver's solution is not reliable
    coef = torch.linalg.lstsq(rows.T, target.T, driver="gelsd").solution
    err = float(torch.linalg.norm(rows.T @ coef - target.T))
    return err <= 1e-5 * max(float(torch.linalg.norm(target)), 1e-30)
