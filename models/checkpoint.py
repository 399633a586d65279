"""Safe checkpoint loading.

Every checkpoint goes through ``torch.load(..., weights_only=True)``: a file that would run code
when unpickled is refused, never executed. Errors come back as one line naming the file.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fragility.errors import CheckpointError

# Keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def missing_file(p: Path) -> str:
    """Why ``p`` is not a checkpoint to read: absent, or there but not a regular file."""
    if p.is_dir():
        return f"checkpoint {p} is a folder, not a file"
    if p.exists():
        return f"checkpoint {p} is not a regular file (a device, pipe or socket)"
    return f"checkpoint not found: {p}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Mapping:
    """Load a checkpoint file as plain data (tensors, dicts, numbers) with ``weights_only=True``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(missing_file(p))
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the error says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        weights_only_refusal = "weights only" in str(e).lower() or "weights_only" in str(e).lower()
        if weights_only_refusal and (zipfile.is_zipfile(p) or _pickle_makes_objects(p)):
            raise CheckpointError(
                f"refusing to load {p}: it holds Python objects that would run code when unpickled "
                f"(only plain tensors and containers are allowed)"
            ) from None
        if weights_only_refusal:  # torch's message would suggest weights_only=False; this file is simply not readable
            raise CheckpointError(f"corrupt checkpoint {p}: neither a PyTorch archive nor a readable pickle") from None
        raise CheckpointError(f"corrupt checkpoint {p}: {first}") from None
    except Exception as e:  # whatever else a damaged file makes torch raise (struct.error on a few bytes, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint {p}: {first[:200]}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    return obj


def _pickle_makes_objects(path: Path, limit: int = 1_000_000) -> bool:
    """Whether ``path`` is a well-formed pickle that imports or builds Python objects (what the
    weights-only loader refuses); random bytes are not, and are reported as a corrupt file."""
    import pickletools

    code_ops = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
    seen = False
    try:
        with open(path, "rb") as f:
            for i, (op, _, _) in enumerate(pickletools.genops(f)):
                seen = seen or op.name in code_ops
                if i > limit:
                    break
    except Exception:  # not a pickle at all
        return False
    return seen


_WRAPPER_BUFFERS = ("mean", "std")  # Classifier's normalization buffers (models/wrapper.py)


def extract_state_dict(obj: Mapping, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint and strip a ``module.`` (DataParallel) prefix."""
    sd = obj
    for _ in range(2):
        for key in _NESTED_KEYS:
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    tensors = {k: v for k, v in sd.items() if torch.is_tensor(v)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (keys: {', '.join(list(sd)[:5])})")
    prefixes = ("module.", "model.", "_orig_mod.")
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def split_wrapper(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A fragility :class:`~fragility.models.wrapper.Classifier`'s own ``state_dict()`` (the
    network under ``net.``, the input normalization as ``mean``/``std`` beside it) as the network's
    weights and that normalization; any other state dict is returned as it is, with ``{}``."""
    rest = [k for k in sd if k not in _WRAPPER_BUFFERS]
    if set(_WRAPPER_BUFFERS) <= set(sd) and rest and all(k.startswith("net.") for k in rest):
        return {k[len("net.") :]: sd[k] for k in rest}, {k: sd[k] for k in _WRAPPER_BUFFERS}
    return sd, {}


def load_weights(
    net: nn.Module, path: str | Path, map_location: str | torch.device = "cpu", normalization: tuple | None = None
) -> nn.Module:
    """Load ``path`` into ``net`` strictly; a mismatch is one line that says what differs.

    A file saved from a whole fragility ``Classifier`` loads too; its stored ``mean``/``std`` must
    then equal ``normalization`` (the model config's ``(mean, std)``), since weights trained behind
    one normalization are wrong behind another."""
    sd, stored = split_wrapper(extract_state_dict(load_checkpoint(path, map_location), path))
    if stored and normalization is not None:
        # tuples, OmegaConf lists (model config) or the wrapper's own buffers (defense=checkpoint)
        want = [torch.as_tensor(v if torch.is_tensor(v) else list(v), dtype=torch.float32).flatten().cpu() for v in normalization]
        have = [stored[k].float().flatten().cpu() for k in _WRAPPER_BUFFERS]
        if any(a.shape != b.shape or not torch.allclose(a, b, atol=1e-6) for a, b in zip(have, want, strict=True)):
            fmt = lambda t: "[" + ", ".join(f"{x:.4g}" for x in t.tolist()) + "]"
            raise CheckpointError(
                f"{path} was saved behind normalization mean={fmt(have[0])} std={fmt(have[1])}, but the model config has "
                f"mean={fmt(want[0])} std={fmt(want[1])}; set model.mean and model.std to the saved values"
            )
    own = net.state_dict()
    # BatchNorm's num_batches_tracked buffer (PyTorch >= 0.4.1) is absent from older checkpoints
    # (e.g. the published CIFAR ResNets) and unused in eval mode: keep the model's own value
    sd = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in sd}, **sd}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        if not missing and not unexpected and _only_the_head(shapes, sd, own):
            k_out = int(sd[shapes[0]].shape[0])
            parts.append(f"its last layer has {k_out} outputs: set model.num_classes={k_out}")
        raise CheckpointError(f"{path} does not match the {type(net).__name__} architecture: " + "; ".join(parts))
    net.load_state_dict(sd, strict=True)
    return net


def _only_the_head(shapes: list[str], sd: dict, own: dict) -> bool:
    """Whether the keys of another shape are one layer's weight (and bias), the model's last, whose
    outputs (dim 0) alone differ: a checkpoint fine-tuned for another number of classes."""
    if not shapes or len(shapes) > 2 or any(k.rpartition(".")[0] != shapes[0].rpartition(".")[0] for k in shapes):
        return False
    last = [k for k in own if k.endswith(".weight") and own[k].dim() >= 2][-1:]
    if [shapes[0].rpartition(".")[0] + ".weight"] != last:
        return False
    return all(sd[k].shape[1:] == own[k].shape[1:] and sd[k].shape[0] == sd[shapes[0]].shape[0] for k in shapes)


# (resolved path, inode, size, mtime_ns, ctime_ns) -> SHA-256: a run hashes its checkpoint for its store key
# (benchmarks/inputs.py) and again when the model loads it; a VGG-16 file takes ~1.5 s to read
_SHA_CACHE: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): the identity of a set of weights. Cached per process for
    as long as the file's inode, size and change times stay the same."""
    p = Path(path).expanduser()
    st = p.stat()
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def identify(model: nn.Module, path: str | Path | None, *, rename: bool = True) -> nn.Module:
    """Record where ``model``'s weights came from: ``model.weights_sha256`` is the SHA-256 of the
    file at ``path``, and (``rename``) the display name gets its first 8 hex digits
    (``cifar_resnet20@12fca82f``), so two weight files of one architecture never merge in a
    leaderboard. Returns ``model``."""
    if path:
        model.weights_sha256 = file_sha256(path)
        # the digest of what was loaded: a network changed in Python since is told apart (models/given.py)
        model.loaded_state_sha256 = state_sha256(model)
        if rename and "@" not in model.name:
            model.name = f"{model.name}@{model.weights_sha256[:8]}"
    return model


def unchanged_since_identified(model: nn.Module, state: str | None = None) -> bool:
    """Whether ``model`` still holds the weights :func:`identify` or :func:`untrained` named
    (``state``: its :func:`state_sha256`, when the caller has it already)."""
    seen = getattr(model, "loaded_state_sha256", "")
    return bool(seen) and seen == (state or state_sha256(model))


def untrained(model: nn.Module, why: str) -> nn.Module:
    """Mark ``model`` as holding random weights (``why``: which setting would have given it
    weights). Its display name gets ``@untrained`` so that its rows never sit under the name of
    the trained network in a leaderboard, and the runner warns. Returns ``model``."""
    model.untrained = why
    model.loaded_state_sha256 = state_sha256(model)
    if "@" not in model.name:
        model.name = f"{model.name}@untrained"
    return model


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of ``model``'s parameters and buffers (names, dtypes, shapes and bytes): the identity
    of weights that came from no file (a retrained digits CNN, a network handed over in Python)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
