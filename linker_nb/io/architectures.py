"""Architecture records: what each tensor of a model family is, read from one data file per family.

`linker_nb/_data/architectures/<model_type>.json` holds, per family: where the language model sits in tensor
names (`prefixes`, `layers`: block i is `<prefix><layers>.<i>.<sub>`), the embedding / final-norm / lm_head
names (the first `embed` name is the token embedding a tied lm_head shares), tensors outside the language model
(`ignore`), the config keys of the head layout (`config`), norm type and offset (Gemma multiplies by 1 + w),
and one entry per block tensor (`block`, checkpoint names; `{e}` stands for an expert index):

* ``kind``: attn, mlp, norm, router, expert or shared_expert (the attention / MLP sub-means use it);
* ``role``: what the tensor does (q, k, v, o, qkv, gate, up, down, gate_up, router, attn_norm, mlp_norm,
  post_attn_norm, post_mlp_norm, q_norm, k_norm); norms also say where they sit (``placement``: pre, post, qk),
  which roles a pre-norm ``feeds`` and a q/k norm's ``scope`` (head: one [head_dim] weight shared by all heads;
  full: [n_heads * head_dim], OLMo-2);
* ``split``: a fused tensor's parts along ``dim`` (``[name, size]``: an integer weight, or a config size times
  ``unit``), so Phi-3's qkv_proj is measured as q, k and v.

`gguf` says how llama.cpp's converter stores the family (read by `io.gguf`): ``arch``, the file's
`general.architecture`; ``permute_qk``, whether q_proj / k_proj rows are reordered for llama.cpp's rotary
embedding (`LlamaModel.permute`, by query / KV heads); ``lm_head`` false when the converter drops a tied
lm_head. Gemma's (1 + w) norm shift is `norm_offset`. A family without the field has no GGUF reader.

`module` lists the parameters whose `transformers` (v5) module names differ from the checkpoint's, with the
checkpoint tensors they are built from (``from``): v5 fuses a MoE layer's experts into
``mlp.experts.gate_up_proj`` [E, 2I, H] = cat(stack_e(gate_e), stack_e(up_e), dim 1) and
``mlp.experts.down_proj`` [E, H, I] (`transformers.conversion_mapping`: MergeModulelist(dim=0) then
Concatenate(dim=1)), while checkpoints store one tensor per expert.

Files are validated when loaded (`ArchitectureError` names the file and field). An unknown `model_type` falls
back to `generic.json`: blocks are found, every block tensor's kind is "unknown", and the scan lists them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["Role", "Part", "Dims", "Architecture", "ArchitectureError", "UnsupportedArchitecture", "KINDS",
           "MLP_KINDS", "get_architecture", "supported", "classify", "layout", "block_count"]

KINDS = ("attn", "mlp", "norm", "router", "expert", "shared_expert")
MLP_KINDS = ("mlp", "expert", "shared_expert")  # the MLP sub-mean: a MoE block's experts are its MLP
ROLES = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up", "router", "attn_norm", "mlp_norm",
         "post_attn_norm", "post_mlp_norm", "q_norm", "k_norm")
_TOP = {"model_type": str, "architectures": list, "description": str, "prefixes": list, "layers": (str, list),
        "embed": list, "final_norm": list, "lm_head": list, "norm_type": str, "norm_offset": (int, float),
        "config": dict, "block": list}
_OPTIONAL = {"ignore": list, "module": list, "tiny_config": dict, "gguf": dict}
_GGUF = {"arch": str}
_GGUF_OPTIONAL = {"permute_qk": bool, "lm_head": bool}
_ENTRY = {"name": str, "kind": str, "role": str, "placement": str, "feeds": list, "scope": str, "split": dict,
          "from": list, "experts": bool, "cat_dim": int}
_DIM_KEYS = ("n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "intermediate", "tied", "n_experts")


class UnsupportedArchitecture(ValueError):
    """The tensor names show no transformer blocks (or an incomplete set of them)."""


class ArchitectureError(ValueError):
    """An architecture record file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Role:
    """Where one tensor belongs.

    Attributes:
        group: "block", "embed", "final_norm", "lm_head" or "other" (outside the language model).
        block: block index for group "block", else None.
        sub: name inside the block (e.g. "self_attn.q_proj.weight"); the full name otherwise.
        kind: one of `KINDS`, "unknown" (a block tensor the record does not know), or "other" (non-block).
        role: the record's role ("q", "gate_up", "router", ...); "" when unknown.
        expert: the expert index of a per-expert tensor, else None.
    """
    group: str
    block: int | None
    sub: str
    kind: str
    role: str = ""
    expert: int | None = None


@dataclass(frozen=True)
class Part:
    """One measured piece of a tensor: the whole tensor, one part of a fused one, or one expert of a stacked one.

    Attributes:
        sub: the tensor's sub-name, with "[part]" / "[expert]" / "[expert:part]" appended for pieces.
        index: basic index of the piece (`tensor[index]` is a view); () for the whole tensor.
    """
    sub: str
    kind: str
    role: str
    expert: int | None
    index: tuple = ()


@dataclass(frozen=True)
class Dims:
    """Head layout and sizes from a config (text config for multimodal models)."""
    hidden: int | None
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None
    intermediate: int | None
    n_experts: int | None


def _fail(src: str, msg: str):
    raise ArchitectureError(f"architecture record {src}: {msg}")


def _check_types(src: str, where: str, d: dict, required: dict, optional: dict) -> None:
    for key, typ in required.items():
        if key not in d:
            _fail(src, f"{where} lacks the field {key!r}")
    for key, val in d.items():
        typ = required.get(key, optional.get(key))
        if typ is None:
            _fail(src, f"{where} has an unknown field {key!r} (known: {sorted({*required, *optional})})")
        if not isinstance(val, typ) or isinstance(val, bool) and typ in (int, (int, float)):
            _fail(src, f"{where} field {key!r} must be {typ}, got {type(val).__name__}")


class Architecture:
    """A validated architecture record (see the module docstring for the fields)."""

    def __init__(self, record: dict, source: str = "<dict>"):
        _check_types(source, "the record", record, _TOP, _OPTIONAL)
        self.source, self.record = source, record
        self.name: str = record["model_type"]
        self.description: str = record["description"]
        self.prefixes = tuple(sorted(record["prefixes"], key=len, reverse=True))
        layers = record["layers"]
        self.layers = (layers,) if isinstance(layers, str) else tuple(layers)
        self.embed, self.final_norm = tuple(record["embed"]), tuple(record["final_norm"])
        self.lm_head, self.ignore = tuple(record["lm_head"]), tuple(record.get("ignore", ()))
        self.norm_type, self.norm_offset = record["norm_type"], float(record["norm_offset"])
        self.config_keys: dict[str, str | list[str]] = record["config"]
        self.tiny_config: dict | None = record.get("tiny_config")
        self.gguf: dict | None = record.get("gguf")
        if self.gguf is not None:
            _check_types(source, "gguf", self.gguf, _GGUF, _GGUF_OPTIONAL)
        if self.norm_type not in ("rmsnorm", "layernorm", "unknown"):
            _fail(source, f"norm_type {self.norm_type!r} is not rmsnorm, layernorm or unknown")
        bad = sorted(set(self.config_keys) - set(_DIM_KEYS)) + [
            k for k, v in self.config_keys.items() if not (isinstance(v, str) or isinstance(v, list) and v
                                                          and all(isinstance(x, str) for x in v))]
        if bad:
            _fail(source, f"config has unknown keys or values that are not a key name / list of names: {bad} "
                          f"(known: {list(_DIM_KEYS)})")
        self.entries = [self._entry(e, f"block[{i}]") for i, e in enumerate(record["block"])]
        self.module_entries = [self._entry(e, f"module[{i}]", module=True)
                               for i, e in enumerate(record.get("module", ()))]
        consumed = {s for m in self.module_entries for s in m["from"]}
        known = {e["name"] for e in self.entries}
        for m in self.module_entries:
            missing = [s for s in m["from"] if s not in known]
            if missing:
                _fail(source, f"module entry {m['name']!r} is built from {missing}, which no block entry names")
        # module layout = the module entries + the checkpoint entries no module entry consumes
        self.module_layout = self.module_entries + [e for e in self.entries if e["name"] not in consumed]
        roles = {e["role"] for e in self.entries + self.module_entries} | {
            p[0] for e in self.entries + self.module_entries for p in e.get("split", {}).get("parts", ())}
        for e in self.entries:
            for r in e.get("feeds", ()):
                if r not in roles:
                    _fail(source, f"{e['name']!r} feeds role {r!r}, which no entry has")
        if self.prefixes == ("*",):
            alt = "|".join(re.escape(x) for x in self.layers)
            self._block_re = re.compile(rf"^(.*?\.|)({alt})\.(\d+)\.(.+)$")
        else:
            self._block_re = None

    def _entry(self, e: dict, where: str, module: bool = False) -> dict:
        src = self.source
        if not isinstance(e, dict):
            _fail(src, f"{where} must be an object")
        _check_types(src, where, e, {"name": str, "kind": str, "role": str}, _ENTRY)
        if e["kind"] not in KINDS:
            _fail(src, f"{where} ({e['name']}) kind {e['kind']!r} is not one of {KINDS}")
        if e["role"] not in ROLES:
            _fail(src, f"{where} ({e['name']}) role {e['role']!r} is not one of {ROLES}")
        if e["kind"] == "norm" and e.get("placement") not in (None, "pre", "post", "qk"):
            _fail(src, f"{where} ({e['name']}) placement must be pre, post or qk")
        if e.get("scope") not in (None, "head", "full"):
            _fail(src, f"{where} ({e['name']}) scope must be head or full")
        if ("from" in e) != module:
            _fail(src, f"{where} ({e['name']}): 'from' belongs to module entries only, and every module entry needs it")
        split = e.get("split")
        if split is not None:
            parts = split.get("parts")
            if not isinstance(split.get("dim"), int) or not isinstance(parts, list) or len(parts) < 2 or any(
                    not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                         and (isinstance(p[1], int) or p[1] in _DIM_KEYS)) for p in parts):
                _fail(src, f"{where} ({e['name']}) split needs an int 'dim' and 'parts' [[name, int or config "
                           f"size], ...] (at least two)")
            if "unit" in split and split["unit"] not in _DIM_KEYS:
                _fail(src, f"{where} ({e['name']}) split unit {split['unit']!r} is not one of {_DIM_KEYS}")
        out = dict(e)
        if "{e}" in e["name"]:
            out["_re"] = re.compile("^" + re.escape(e["name"]).replace(r"\{e\}", r"(\d+)") + "$")
        return out

    def __repr__(self) -> str:
        return f"Architecture({self.name!r}, {len(self.entries)} block entries, from {self.source})"

    @property
    def is_generic(self) -> bool:
        return self.name == "generic"

    # -- names -------------------------------------------------------------------------------------------------
    def match_block(self, name: str) -> tuple[str, int, str] | None:
        """(prefix + layers + ".", index, sub) of a block tensor name, else None."""
        if self._block_re is not None:
            m = self._block_re.match(name)
            return (f"{m.group(1)}{m.group(2)}.", int(m.group(3)), m.group(4)) if m else None
        for p in self.prefixes:
            for lay in self.layers:
                head = f"{p}{lay}."
                if name.startswith(head):
                    idx, _, sub = name[len(head):].partition(".")
                    if idx.isdigit() and sub:
                        return head, int(idx), sub
        return None

    def entry(self, sub: str, module: bool = False) -> tuple[dict, int | None] | None:
        """The record entry of a block sub-name (checkpoint layout, or module layout first when `module`), with
        the expert index for `{e}` entries."""
        for e in (self.module_layout + self.entries) if module else self.entries + self.module_entries:
            if "_re" in e:
                m = e["_re"].match(sub)
                if m:
                    return e, int(m.group(1))
            elif e["name"] == sub:
                return e, None
        return None

    def _relative(self, name: str) -> list[str]:
        if self.prefixes == ("*",):
            return [name] + [name[i + 1:] for i, c in enumerate(name) if c == "."]
        return [name[len(p):] for p in self.prefixes if name.startswith(p)] + [name]

    def classify(self, name: str) -> Role:
        """Role of one tensor (checkpoint or module name)."""
        for tok in self.ignore:
            if name.startswith(tok) or f".{tok}" in name:
                return Role("other", None, name[name.index(tok):], "other")
        m = self.match_block(name)
        if m:
            found = self.entry(m[2], module=True)
            if found is None:
                return Role("block", m[1], m[2], "unknown")
            e, expert = found
            return Role("block", m[1], m[2], e["kind"], e["role"], expert)
        if name in self.lm_head:
            return Role("lm_head", None, name, "other")
        for rel in self._relative(name):
            if rel in self.embed:
                return Role("embed", None, name, "other")
            if rel in self.final_norm:
                return Role("final_norm", None, name, "norm")
        return Role("other", None, name, "other")

    def key(self, name: str) -> tuple:
        """A prefix-free key of a tensor, equal for a module parameter and the checkpoint tensor of the same
        name ("model.language_model.norm.weight" and "language_model.model.norm.weight")."""
        r = self.classify(name)
        if r.group == "block":
            return ("block", r.block, r.sub)
        if r.group in ("embed", "final_norm"):
            rel = next(x for x in self._relative(name) if x in (self.embed if r.group == "embed" else self.final_norm))
            return (r.group, rel)
        return (r.group,) if r.group == "lm_head" else ("other", r.sub)

    # -- sizes and parts ---------------------------------------------------------------------------------------
    def dims(self, config) -> Dims:
        """Head layout from a config: a dict, a `transformers` config or a `Checkpoint`'s config (the text config
        of a multimodal model). Missing KV heads default to the query heads, head_dim to hidden / heads."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
            config = config["text_config"]
        look = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)

        def get(key):  # a record may list several config keys for one size (renamed across versions)
            names = self.config_keys.get(key, ())
            return next((v for v in (look(n) for n in ([names] if isinstance(names, str) else names))
                         if v is not None), None)
        hidden, n_heads = get("hidden"), get("n_heads")
        return Dims(hidden=hidden, n_heads=n_heads, n_kv_heads=get("n_kv_heads") or n_heads,
                    head_dim=get("head_dim") or (hidden // n_heads if hidden and n_heads else None),
                    intermediate=get("intermediate"), n_experts=get("n_experts"))

    def parts(self, name_or_role, shape: tuple[int, ...], dims: Dims | None = None,
              module: bool = False) -> list[Part]:
        """The pieces a tensor is measured as: fused tensors split into their parts, stacked experts into one
        piece per expert (and each into its parts). Unknown or plain tensors are one piece.

        Raises:
            ArchitectureError: the fused tensor's size does not match its parts under this config.
        """
        role = name_or_role if isinstance(name_or_role, Role) else self.classify(name_or_role)
        found = self.entry(role.sub, module=module) if role.group == "block" else None
        if found is None or not (found[0].get("split") or found[0].get("experts")):
            return [Part(role.sub, role.kind, role.role, role.expert)]
        e = found[0]
        lead = e.get("experts", False)
        experts = range(shape[0]) if lead else [None]
        out = []
        for x in experts:
            pre = (x,) if lead else ()
            split = e.get("split")
            if split is None:
                out.append(Part(f"{role.sub}[{x}]", e["kind"], e["role"], x, pre))
                continue
            dim, inner = split["dim"], shape[1:] if lead else shape
            sizes = self._sizes(e, split, inner[dim], dims)
            a = 0
            for (pname, _), n in zip(split["parts"], sizes):
                idx = pre + (slice(None),) * dim + (slice(a, a + n),)
                sub = f"{role.sub}[{x}:{pname}]" if lead else f"{role.sub}[{pname}]"
                out.append(Part(sub, e["kind"], pname, x, idx))
                a += n
        return out

    def _sizes(self, e: dict, split: dict, total: int, dims: Dims | None) -> list[int]:
        parts = split["parts"]
        if all(isinstance(p[1], int) for p in parts):
            w = sum(p[1] for p in parts)
            if total % w:
                raise ArchitectureError(f"{e['name']}: {total} rows do not split {[p[1] for p in parts]}")
            return [total * p[1] // w for p in parts]
        if dims is None:
            raise ArchitectureError(f"{e['name']} splits by config sizes: pass the model's dims")
        unit = getattr(dims, split.get("unit", ""), None) or 1
        sizes = [(p[1] if isinstance(p[1], int) else getattr(dims, p[1])) * unit for p in parts]
        if sum(sizes) != total:
            raise ArchitectureError(f"{e['name']} has {total} rows along dim {split['dim']} but its parts "
                                    f"{[p[0] for p in parts]} need {sizes} from the config ({dims}); the config "
                                    f"does not describe this checkpoint.")
        return sizes

    # -- modules -------------------------------------------------------------------------------------------------
    def decoder_layers(self, model):
        """The decoder-layer ModuleList of a model: `<prefix><layers>` of the record (or of a base model,
        whose names have no prefix)."""
        from torch import nn
        if self.prefixes == ("*",):
            cands = sorted((n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)
                            and n.rpartition(".")[2] in self.layers and len(m)), key=len)
            paths = cands[:1]
        else:
            paths = [f"{p}{lay}" for p in (*self.prefixes, "") for lay in self.layers]
        for path in paths:
            try:
                mod = model.get_submodule(path.rstrip("."))
            except AttributeError:
                continue
            if isinstance(mod, nn.ModuleList):
                return mod
        raise UnsupportedArchitecture(f"{type(model).__name__} has none of the decoder-layer lists {paths} "
                                      f"named by {self.source}; fix the record's prefixes / layers.")


@lru_cache(maxsize=None)
def _load(model_type: str) -> Architecture | None:
    if not re.fullmatch(r"[A-Za-z0-9_]+", model_type):
        return None
    f = resources.files("linker_nb") / "_data" / "architectures" / f"{model_type}.json"
    if not f.is_file():
        return None
    src = f"linker_nb/_data/architectures/{model_type}.json"
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArchitectureError(f"architecture record {src} is not valid JSON: {exc}") from exc
    arch = Architecture(record, src)
    if arch.name != model_type:
        _fail(src, f"model_type {arch.name!r} differs from the file name {model_type!r}")
    return arch


def supported() -> list[str]:
    """The model types with a record (generic excluded)."""
    d = resources.files("linker_nb") / "_data" / "architectures"
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".json") and p.name != "generic.json")


def get_architecture(model_type: str, names: list[str] | None = None) -> Architecture:
    """The record for a config's `model_type`; unknown types fall back to `generic` when `names` shows
    `*.layers|h|blocks.N.*` blocks, else fail clearly."""
    arch = _load(model_type) if model_type != "generic" else None
    if arch is not None:
        return arch
    gen = _load("generic")
    if names is None or any(gen.match_block(n) for n in names):
        return gen
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} is not supported and its tensor names show no `*.layers.N.*` / "
        f"`*.h.N.*` blocks. Supported: {', '.join(supported())} (and any model with that pattern, as "
        f"'generic'). Add linker_nb/_data/architectures/{model_type}.json for it.")


def classify(name: str, model_type: str = "llama") -> Role:
    """Role of one tensor name under `model_type`'s record."""
    return get_architecture(model_type, [name]).classify(name)


def layout(names: list[str], model_type: str) -> tuple[Architecture, dict[str, Role]]:
    """Classify every name of a checkpoint; checks that blocks are numbered 0..n-1.

    Returns:
        (architecture, {name: Role}).
    """
    arch = get_architecture(model_type, names)
    roles = {n: arch.classify(n) for n in names}
    idx = sorted({r.block for r in roles.values() if r.group == "block"})
    if not idx:
        raise UnsupportedArchitecture(f"no transformer-block tensors found for model_type {model_type!r} "
                                      f"(first names: {names[:3]}); {arch.source} expects "
                                      f"{arch.prefixes[0]}{arch.layers[0]}.N.*")
    if idx != list(range(len(idx))):
        gaps = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise UnsupportedArchitecture(f"block indices are not contiguous: missing {gaps[:5]} (of 0..{idx[-1]}); "
                                      f"the checkpoint is incomplete.")
    return arch, roles


def block_count(items) -> int:
    """Number of blocks among `Role`s or records (anything with `.group` and `.block`): 1 + the largest index."""
    return 1 + max(r.block for r in items if r.group == "block")
