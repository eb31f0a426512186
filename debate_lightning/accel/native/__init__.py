"""Native CPU kernels for the lean decode loop, compiled once with the system C compiler and
loaded with ``ctypes``.

A decode step at batch 16 is bound by streaming weights and KV caches from memory, and torch's
kernels (tuned for big products) reach about half of this CPU's bandwidth there:

* ``decode_attention.c``: one query token per row against its cache (and its group's shared
  prefix), each key/value row read once (:class:`DecodeAttention`);
* ``causal_attention.c``: causal attention of many query tokens (prefill, judging), lower-right
  aligned after a cache, with a key mask for padding, computing each query tile only up to its
  own last key (:func:`causal_attention`);
* ``small_gemm.c``: linears of a few rows (across the vector lanes) against weights packed once into 6-column blocks
  (:class:`SmallLinear`);
* ``decode_ops.c``: RMSNorm, the SiLU gate, the rotary embedding with the cache write, and
  sampling from the softmax at a temperature, each one call instead of several torch ops
  (:class:`StepOps`).

They are built on first use for the CPU they run on (``-march=native``) into ``<cache>/kernels/``
(see ``embedded.cache_root``; a per-user temporary directory where that is read-only), keyed by
the sources, flags, compiler and CPU, so a cluster with mixed nodes keeps one build per kind.

Everything here is optional: without an x86-64 CPU with AVX2 and FMA, without a C compiler
(``$CC``, ``cc`` or ``gcc``), or with ``DEBATE_LIGHTNING_NATIVE=0``, :func:`library` returns
None and callers use their torch path. A failed build is reported once (with the compiler's
message) and never raised: decoding is only slower.

The library links OpenMP; ``torch`` is imported first, so its own OpenMP runtime (the one its
kernels use) is the one that gets loaded, and both share one thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from debate_lightning.models.embedded import cache_root

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in (
    "decode_attention.c", "causal_attention.c", "small_gemm.c", "decode_ops.c"
))
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
_P, _I = ctypes.c_void_p, ctypes.c_int64


def _cpu() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux), or empty when unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def _compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` (may carry flags), else ``cc`` or ``gcc`` on the PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return None if found is None else [found]


def disabled_reason() -> str | None:
    """Why native kernels cannot be used here (None: they can, if the build succeeds)."""
    if os.environ.get("DEBATE_LIGHTNING_NATIVE", "1").lower() in ("0", "false", "no", "off"):
        return "turned off by DEBATE_LIGHTNING_NATIVE"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"CPU architecture {platform.machine()} (the kernels use AVX2)"
    if not {"avx2", "fma"} <= _cpu()[1]:
        return "this CPU lacks AVX2/FMA"
    if _compiler() is None:
        return "no C compiler (set $CC or install gcc)"
    return None


def _kernel_dir() -> Path:
    """``<cache>/kernels``, or a per-user temporary directory where the cache is read-only (a
    Singularity image's baked-in cache)."""
    directory = cache_root() / "kernels"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"debate_lightning-kernels-{os.getuid()}"


def build(directory: Path | None = None) -> Path:
    """Compile the kernels (if this build does not exist yet) and return the library's path.

    Raises ``RuntimeError`` with the compiler's output when compilation fails."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    source = b"\0".join(path.read_bytes() for path in SOURCES)
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    except OSError as err:
        raise RuntimeError(f"cannot run the C compiler {' '.join(compiler)}: {err}") from err
    model, flags = _cpu()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), model.encode(),
                                     " ".join(sorted(flags)).encode()])).hexdigest()[:16]
    directory = directory or _kernel_dir()
    target = directory / f"kernels-{key}.so"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builds (DDP ranks) never load a half file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        sources = [str(path) for path in SOURCES]
        result = subprocess.run([*compiler, *FLAGS, *sources, "-o", tmp, "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"compiling {' '.join(sources)} with {' '.join(compiler)} failed:\n{result.stderr.strip()[-2000:]}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot be used (reported once in the log)."""
    reason = disabled_reason()
    if reason is None:
        try:
            lib = ctypes.CDLL(str(build()))
        except (RuntimeError, OSError) as err:
            log.warning("native CPU kernels not used (decoding falls back to torch ops): %s", err)
            return None
        else:
            lib.decode_attention.restype = ctypes.c_int
            lib.decode_attention.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, ctypes.c_float,
                                             _P, _P, _P, _P, _I, _P, _P]
            lib.causal_attention.restype = ctypes.c_int
            lib.causal_attention.argtypes = [_P, _I, _I, _I, _P, _I, _I, _I, _P, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I,
                                             ctypes.c_float, _P, _P]
            lib.small_gemm.restype = ctypes.c_int
            lib.small_gemm.argtypes = [_P, _I, _I, _P, _I, _P, _P]
            lib.rms_norm.restype = lib.silu_mul.restype = lib.rope_store.restype = None
            lib.rms_norm.argtypes = [_P, _I, _I, _P, ctypes.c_float, _P]
            lib.silu_mul.argtypes = [_P, _P, _I, _I, _I, _P]
            lib.rope_store.argtypes = [_P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, _I]
            lib.sample_rows.restype = None
            lib.sample_rows.argtypes = [_P, _I, _I, ctypes.c_float, _P, _I, _P, _P, _P]
            return lib
    log.info("native CPU kernels not used: %s", reason)
    return None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class DecodeAttention:
    """Attention of one new token per row for a whole decode, built once per ``decode`` call with
    the row layout, then called per layer and step as ``(layer, q, keys, values, width)``.

    ``start[b]``: first valid column of row b in the cache buffers (left padding before it).
    ``shared[layer]``: None, or that layer's (G, kv, S, d) shared-prefix keys and values; then
    ``group[b]`` is row b's group (-1: none) and ``shared_len[g]`` group g's prefix length.
    """

    def __init__(self, lib: ctypes.CDLL, batch: int, kv_heads: int, heads_per_kv: int, head_dim: int,
                 start: torch.Tensor, max_width: int, shared: list | None = None,
                 group: torch.Tensor | None = None, shared_len: torch.Tensor | None = None):
        if not self.supports(head_dim, heads_per_kv):
            raise ValueError(f"decode attention does not support head_dim {head_dim} with {heads_per_kv} heads per kv head")
        self.lib = lib
        self.shape = (batch, kv_heads, heads_per_kv, head_dim)
        self.start = start.to(torch.int64).contiguous()
        self.shared = shared if shared is not None and shared[0] is not None else None
        if self.shared is not None:
            if group is None or shared_len is None:
                raise ValueError("shared prefixes need each row's group and each group's length")
            for keys, values in self.shared:
                if not (keys.is_contiguous() and values.is_contiguous()) or keys.shape[1] != kv_heads:
                    raise ValueError("shared prefixes must be contiguous (G, kv, S, d) tensors")
            self.group = group.to(torch.int64).contiguous()
            self.shared_len = shared_len.to(torch.int64).contiguous()
        self.shared_width = 0 if self.shared is None else self.shared[0][0].shape[2]
        self.scale = head_dim**-0.5
        self.out = torch.empty(self.shape)
        self.scratch = torch.empty(batch * kv_heads * heads_per_kv * (self.shared_width + max_width))

    @staticmethod
    def supports(head_dim: int, heads_per_kv: int) -> bool:
        """Shapes the kernel handles (it also needs fp32 CPU tensors)."""
        return head_dim % 32 == 0 and 1 <= heads_per_kv <= 16

    def __call__(self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
        """q (B, kv, g, d); keys/values (B, kv, T, d) buffers, attended over columns [start, width)
        after the row's shared prefix. Returns (B, kv, g, d) in a buffer the next call overwrites."""
        batch, kv, g, d = self.shape
        q = q.contiguous()
        if not (keys.is_contiguous() and values.is_contiguous()) or keys.shape[:2] != (batch, kv) or width > keys.shape[2]:
            raise ValueError("decode attention needs contiguous (B, kv, T, d) key/value buffers with T >= width")
        ks, vs = self.shared[layer] if self.shared is not None else (None, None)
        self.lib.decode_attention(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), self.start.data_ptr(), batch, kv, g, d,
            keys.shape[2], width, self.scale, _ptr(ks), _ptr(vs), _ptr(self.group if ks is not None else None),
            _ptr(self.shared_len if ks is not None else None), self.shared_width, self.out.data_ptr(), self.scratch.data_ptr(),
        )
        return self.out


_scratch = threading.local()  # per thread: ctypes calls release the GIL


def _scratch_floats(n: int) -> torch.Tensor:
    """A reused buffer of at least ``n`` floats (fresh pages cost more than the transpose)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _scratch.buf = torch.empty(max(n, 1 << 16))
    return buf


def causal_attention_supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether :func:`causal_attention` takes these (B, H, L, d) / (B, kv, S, d) tensors."""
    return (
        query.dtype == key.dtype == torch.float32 and query.device.type == key.device.type == "cpu"
        and query.dim() == key.dim() == 4 and query.shape[0] == key.shape[0] and query.shape[3] == key.shape[3]
        and query.shape[3] % 16 == 0 and query.shape[3] <= 256 and query.shape[1] % key.shape[1] == 0
        and query.shape[2] <= key.shape[2] and library() is not None
    )


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """Lower-right causal attention: ``query`` (B, H, L, d) holds the last L of the S positions of
    ``key``/``value`` (B, kv, S, d) (H a multiple of kv: grouped-query heads read their kv head
    directly), query i sees keys up to S - L + i that ``key_mask`` (B, S) marks visible (None:
    all). Returns (B, L, H, d), the layout attention modules hand their output projection; a
    query with no visible key gets zeros. fp32 CPU only (:func:`causal_attention_supports`)."""
    lib = library()
    if lib is None or not causal_attention_supports(query, key) or value.shape != key.shape or value.dtype != key.dtype:
        raise ValueError(f"causal_attention cannot take query {tuple(query.shape)} {query.dtype}, key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)} (fp32 CPU, head_dim a multiple of 16 up to 256, native kernels built)")
    batch, heads, length, d = query.shape
    kv, total = key.shape[1], key.shape[2]
    tensors = [t if t.stride(3) == 1 else t.contiguous() for t in (query, key, value)]
    mask = None
    if key_mask is not None:
        if key_mask.shape != (batch, total):
            raise ValueError(f"causal_attention: key mask {tuple(key_mask.shape)} for {batch} rows of {total} keys")
        mask = key_mask.to(device="cpu", dtype=torch.uint8).contiguous()
    out = query.new_empty(batch, length, heads, d)
    scratch = _scratch_floats(batch * kv * d * (-(-total // 16) * 16))
    if lib.causal_attention(
        *(x for t in tensors for x in (t.data_ptr(), *t.stride()[:3])), _ptr(mask), batch, heads, kv, length, total, d,
        d**-0.5 if scale is None else scale, out.data_ptr(), scratch.data_ptr(),
    ):
        raise ValueError(f"causal_attention: the kernel refused query {tuple(query.shape)}, key {tuple(key.shape)}")
    return out


class SmallLinear:
    """``x -> x @ weight.T + bias`` for 2-D fp32 CPU inputs of a few rows (decode steps), the
    weight packed now into (ceil(N/6), K, 6) column blocks (a copy: later changes to it are not seen)."""

    BLOCK = 6

    def __init__(self, lib: ctypes.CDLL, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"SmallLinear needs a 2-D fp32 CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
        self.lib = lib
        self.out_features, self.in_features = weight.shape
        blocks = -(-self.out_features // self.BLOCK)
        padded = weight.new_zeros(blocks * self.BLOCK, self.in_features)
        padded[: self.out_features] = weight.detach()
        self.packed = padded.view(blocks, self.BLOCK, self.in_features).transpose(1, 2).contiguous()
        self.bias = None if bias is None else bias.detach().to(torch.float32).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"SmallLinear({self.in_features} -> {self.out_features}) got input {tuple(x.shape)} {x.dtype}")
        x = x.contiguous()
        y = x.new_empty(x.shape[0], self.out_features)
        if x.shape[0] and self.lib.small_gemm(x.data_ptr(), x.shape[0], self.in_features, self.packed.data_ptr(),
                                              self.out_features, _ptr(self.bias), y.data_ptr()):
            raise MemoryError(f"SmallLinear: no memory for a ({x.shape[0]}, {self.in_features}) input's transpose")
        return y


def _check(t: torch.Tensor, name: str, dim: int) -> torch.Tensor:
    if t.dim() != dim or t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{name} must be a {dim}-D fp32 CPU tensor, got {tuple(t.shape)} {t.dtype} on {t.device}")
    return t.contiguous()


@functools.cache
def step_ops() -> StepOps | None:
    """The element-wise kernels over the loaded library (one instance), or None without it."""
    lib = library()
    return None if lib is None else StepOps(lib)


class StepOps:
    """The element-wise parts of a decode step on 2-D fp32 CPU tensors (rows first)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension."""
        x, weight = _check(x, "rms_norm input", 2), _check(weight, "rms_norm weight", 1)
        if weight.shape[0] != x.shape[1]:
            raise ValueError(f"rms_norm weight has {weight.shape[0]} entries for rows of {x.shape[1]}")
        y = torch.empty_like(x)
        self.lib.rms_norm(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), eps, y.data_ptr())
        return y

    def silu_mul(self, gate_up: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        """``silu(gate) * up`` for rows ``[gate | up]`` of a fused projection, or for separate
        (rows, n) ``gate_up`` (then just the gate) and ``up``."""
        gate = _check(gate_up, "silu_mul input", 2)
        if up is None:
            if gate.shape[1] % 2:
                raise ValueError(f"silu_mul needs rows of [gate | up], got an odd width {gate.shape[1]}")
            n, stride, up_ptr = gate.shape[1] // 2, gate.shape[1], gate.data_ptr() + gate.shape[1] // 2 * 4
        else:
            up = _check(up, "silu_mul up", 2)
            if up.shape != gate.shape:
                raise ValueError(f"silu_mul: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
            n, stride, up_ptr = gate.shape[1], gate.shape[1], up.data_ptr()
        y = gate.new_empty(gate.shape[0], n)
        self.lib.silu_mul(gate.data_ptr(), up_ptr, gate.shape[0], n, stride, y.data_ptr())
        return y

    def rope_store(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                   values: torch.Tensor, column: int, heads: int) -> torch.Tensor:
        """Rotate q and k of a fused (B, (h + 2 kv) d) projection by (B, d) ``cos``/``sin``; write
        k and v into column ``column`` of the (B, kv, T, d) buffers; return q as (B, h, d)."""
        qkv, cos, sin = _check(qkv, "qkv", 2), _check(cos, "cos", 2), _check(sin, "sin", 2)
        batch, kv, total, d = keys.shape
        if not (keys.is_contiguous() and values.is_contiguous() and keys.shape == values.shape) or not 0 <= column < total:
            raise ValueError(f"rope_store needs equal contiguous (B, kv, T, d) buffers and 0 <= column < T, got column {column}")
        if qkv.shape != (batch, (heads + 2 * kv) * d) or cos.shape != (batch, d) or sin.shape != (batch, d) or d % 2:
            raise ValueError(f"rope_store: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)} do not fit {heads} heads, {kv} kv heads of {d}")
        q = qkv.new_empty(batch, heads, d)
        self.lib.rope_store(qkv.data_ptr(), batch, heads, kv, d, cos.data_ptr(), sin.data_ptr(), q.data_ptr(),
                            keys.data_ptr(), values.data_ptr(), total, column)
        return q

    def sample(self, logits: torch.Tensor, temperature: float, banned: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of (B, V) ``logits`` from softmax(logits / temperature), ``banned``
        tokens at probability zero, by inverse CDF at one uniform number per row (from torch's
        generator, so seeds hold)."""
        logits = _check(logits, "logits", 2)
        if temperature <= 0:
            raise ValueError(f"sampling needs a temperature > 0, got {temperature}")
        banned = torch.empty(0, dtype=torch.int64) if banned is None else banned.to(torch.int64).contiguous()
        u = torch.rand(logits.shape[0], dtype=torch.float64, generator=generator)
        scratch = torch.empty_like(logits)
        out = torch.empty(logits.shape[0], dtype=torch.int64)
        self.lib.sample_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], 1.0 / temperature, banned.data_ptr(),
                             banned.numel(), u.data_ptr(), scratch.data_ptr(), out.data_ptr())
        if bool((out < 0).any()):
            raise ValueError("sampling: a row has no token with probability > 0 (every token banned or -inf)")
        return out
