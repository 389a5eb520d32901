"""Hugging Face transformers integration: a config, causal-LM and masked-LM models, their
tokenizers, the Auto classes.

Importing this module imports transformers (the ``[hf]`` extra) and registers ``"flashcore"``
with ``AutoConfig``, :class:`FlashcoreForCausalLM` with ``AutoModelForCausalLM`` and
:class:`FlashcoreForMaskedLM` with ``AutoModelForMaskedLM``:

    import flashcore.torch.hf  # registers the Auto classes
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained("path/to/dir")         # or a Hub id
    out = model.generate(torch.tensor([list(b"def ")]), max_new_tokens=20, do_sample=False)
    pipeline("text-generation", model="path/to/dir")("def ", max_new_tokens=20, do_sample=False)
    model.save_pretrained("other/dir")

A directory holds ``config.json`` (the HF config; the LM config under the key ``flashcore``),
``model.safetensors``: the canonical weight file of :mod:`flashcore.io` (canonical names, kernels
``[in, out]``, the config in the metadata), not the torch module's state dict, so that the same
directory loads in every backend: ``flashcore.{torch,jax,tf}.LM.from_pretrained(dir)``, and a
tokenizer (``tokenizer.json``, :func:`save_tokenizer`): the byte tokenizer of byte-level LMs
(id = byte; a masked LM's ``[MASK]`` is id 256), or the tokenizer that made a run's ids.

Generation: ``generate`` decodes incrementally with the LM's decoding state
(:mod:`flashcore.decode`) as the cache (:class:`FlashcoreDecodeState`, a transformers ``Cache``):
FLASH's constant-size state, or the key/value caches of Transformer++ and one-layer GAU LMs
(sized for the prompt plus ``max_new_tokens``). The prompt is fed token by token, then each new
token costs one ``decode_step``. An LM of several GAU layers dividing by the growing length
(no exact incremental form) reruns the full forward every step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

import flashcore as fc
from flashcore import pretrained
from flashcore.io import WeightFileError
from flashcore.weightmeta import from_native

from . import io
from .lm import LM
from .xp import xp

__all__ = [
    "FlashcoreConfig",
    "FlashcoreDecodeState",
    "FlashcorePreTrainedModel",
    "FlashcoreForCausalLM",
    "FlashcoreForMaskedLM",
    "byte_tokenizer",
    "save_tokenizer",
]

IGNORE_INDEX = -100  # transformers' label for "no loss here"

# from_pretrained arguments that transformers' Auto classes pass along and that change nothing
# here (no remote code, no adapters, no proxies needed for a local folder).
_IGNORED_LOAD_KWARGS = ("trust_remote_code", "_from_auto", "adapter_kwargs", "proxies")


class FlashcoreConfig(PreTrainedConfig):
    """The Hugging Face config of a flashcore LM.

    ``flashcore``: the :class:`flashcore.LMConfig` (or its ``to_dict()``, as config.json holds it;
    default: the default LMConfig). ``vocab_size``, ``hidden_size`` and ``num_hidden_layers`` are derived from
    it (given ones must agree). ``lm_config`` gives the frozen LMConfig back; config.json round
    trips it exactly.
    """

    model_type = pretrained.MODEL_TYPE

    flashcore: dict | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.flashcore is None:
            lm = fc.LMConfig()
        elif isinstance(self.flashcore, fc.LMConfig):
            lm = self.flashcore
        else:
            lm = fc.config_from_dict(self.flashcore)
        if not isinstance(lm, fc.LMConfig):
            raise ValueError(f"FlashcoreConfig.flashcore must describe an LMConfig, got {lm!r}")
        self.flashcore = lm.to_dict()
        derived = {
            "vocab_size": lm.vocab_size,
            "hidden_size": lm.dim,
            "num_hidden_layers": lm.num_layers,
        }
        for name, value in derived.items():
            given = getattr(self, name)
            if given is not None and given != value:
                raise ValueError(
                    f"FlashcoreConfig.{name}={given} disagrees with the flashcore LM config "
                    f"({value}); change the LM config instead"
                )
            setattr(self, name, value)
        super().__post_init__(**kwargs)

    @classmethod
    def from_lm_config(cls, config: fc.LMConfig, **kwargs: Any) -> FlashcoreConfig:
        """The HF config of ``config``; ``kwargs``: other HF config fields."""
        if not isinstance(config, fc.LMConfig):
            raise ValueError(f"FlashcoreConfig needs an LMConfig, got {type(config).__name__}")
        return cls(flashcore=config.to_dict(), **kwargs)

    @property
    def lm_config(self) -> fc.LMConfig:
        """The frozen :class:`flashcore.LMConfig` this config describes."""
        return fc.config_from_dict(self.flashcore)  # type: ignore[return-value]


class FlashcoreDecodeState(Cache):
    """An LM's decoding state as a transformers ``Cache``: FLASH's constant-size state, or the
    fixed-capacity key/value caches of Transformer++ and one-layer GAU LMs.

    ``state``: ``{"layers.{i}": layer state}`` of :func:`flashcore.decode.lm_decode_init`;
    ``seen``: how many tokens went in. ``crop`` (rolling back tokens) is not offered (FLASH's state
    sums the past); beam search reorders the batch rows.
    """

    def __init__(self, state: dict[str, dict[str, torch.Tensor]], seen: int = 0):
        super().__init__(layers=[])
        self.state = state
        self.seen = seen

    def __bool__(self) -> bool:  # Cache.__len__ counts KV layers: none here
        return True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no limit

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        for layer in self.state.values():
            for v in layer.values():
                if v.ndim:  # every per-row tensor has the batch first; pos is shared
                    return int(v.shape[0])
        return -1

    def _rows(self, fn) -> None:
        """Apply ``fn`` to every per-row tensor (the batch is axis 0; ``pos`` is shared)."""
        self.state = {
            name: {k: (v if v.ndim == 0 else fn(v)) for k, v in layer.items()}
            for name, layer in self.state.items()
        }

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rows(lambda v: v.index_select(0, beam_idx.to(v.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rows(lambda v: v[indices.to(v.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(lambda v: v.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError(
                "the decoding state cannot drop tokens (FLASH's sums the past)"
            )

    def reset(self) -> None:
        self.state = {
            name: {k: torch.zeros_like(v) for k, v in layer.items()}
            for name, layer in self.state.items()
        }
        self.seen = 0

    def __repr__(self) -> str:
        return f"FlashcoreDecodeState(layers={len(self.state)}, seen={self.seen})"


class FlashcorePreTrainedModel(PreTrainedModel):
    """Base of the flashcore HF models: the config class and flashcore's own initialisation."""

    config_class = FlashcoreConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    def _init_weights(self, module) -> None:
        """Nothing: the wrapped flashcore LM is initialised by ``flashcore.init`` when built (or
        loaded from canonical weights); transformers' default init would overwrite it."""

    def __init__(self, config: FlashcoreConfig, *, seed: int | None = None, lm: LM | None = None):
        super().__init__(config)
        if lm is None:
            lm = LM(config.lm_config, seed=seed)
        elif lm.config != config.lm_config:
            raise ValueError(f"the LM's config {lm.config!r} is not the HF config's")
        self.model = lm
        self.post_init()

    @classmethod
    def from_flashcore(cls, lm: LM, **config_kwargs: Any):
        """Wrap ``lm`` (its parameters are shared, not copied)."""
        return cls(FlashcoreConfig.from_lm_config(lm.config, **config_kwargs), lm=lm)

    # -- embeddings (transformers' accessors) ----------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value) -> None:
        raise NotImplementedError(
            "the vocabulary is part of the flashcore LM config; build a new model instead"
        )

    def get_output_embeddings(self):
        return None  # tied (the spec reuses embed.weight) or flashcore's own head.kernel

    @staticmethod
    def _padding(input_ids, attention_mask) -> torch.Tensor | None:
        """Check input_ids (b, t) and attention_mask (b, t), 1 = real -> the bool mask or None."""
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be (batch, time >= 1) token ids, got {shape}")
        if attention_mask is None:
            return None
        if attention_mask.ndim != 2 or attention_mask.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"attention_mask must be (batch, time), got {tuple(attention_mask.shape)}"
            )
        return attention_mask.bool()

    # -- weights: canonical files ------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (canonical names, kernels
        ``[in, out]``, the config in its metadata; written atomically) into ``save_directory``,
        and, for a byte-level vocabulary, the byte tokenizer (:func:`save_tokenizer`) unless the
        folder holds a tokenizer already (save yours with its own ``save_pretrained``).

        ``state_dict``: this model's own ``state_dict()`` (as the Trainer passes it), saved
        instead of the live parameters. ``push_to_hub``: also uploads it through transformers'
        ``push_to_hub`` (``repo_id``, ``token``; needs a network; not tested here). Other
        transformers arguments (``safe_serialization``, ``max_shard_size``) change nothing:
        the file is always one canonical safetensors file.
        """
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"{save_directory}: a file, not a folder")
        if not is_main_process:
            return
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.model.config
        if state_dict is None:
            tensors = self.model.to_canonical(tensors=True)
        else:
            tensors = self._canonical_from_state_dict(state_dict)
        io.save_canonical_tensors(directory / pretrained.WEIGHTS_NAME, tensors, config)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(directory)
        if not (directory / TOKENIZER_NAME).exists() and is_byte_vocabulary(config):
            save_tokenizer(directory, config)
        if self.can_generate():
            self.generation_config.save_pretrained(directory)
        if push_to_hub:  # transformers' PushToHubMixin: saves again into a temporary folder
            hub = {k: kwargs[k] for k in ("token", "private", "commit_message") if k in kwargs}
            self.push_to_hub(kwargs.get("repo_id") or directory.name, **hub)

    def _canonical_from_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict:
        """This model's state dict (``model.`` + flashcore.torch names) -> canonical tensors."""
        prefix = self.base_model_prefix + "."
        native = {
            k[len(prefix) :]: v.detach().cpu().contiguous()
            for k, v in state_dict.items()
            if k.startswith(prefix)
        }
        params = from_native("state_dict", native, self.model.naming, _t)
        return {k: v.contiguous().clone() for k, v in params.items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also takes canonical weights (``model.safetensors`` as this class saves it, e.g.
        when the Trainer resumes from a checkpoint): they are loaded through the naming table."""
        names = set(state_dict)
        if names and names == set(fc.param_spec(self.model.config)):
            self.model.load_canonical(state_dict)
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: FlashcoreConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device_map: str | torch.device | None = None,
        **kwargs: Any,
    ) -> FlashcorePreTrainedModel:
        """A model from a directory (or a Hub id, fetched by huggingface_hub) holding config.json
        and the canonical model.safetensors.

        A ``generation_config.json`` there sets ``generation_config``. ``dtype``: cast the
        weights (default: the file's dtype; "auto" too). ``device_map``: one
        device ("cpu", "cuda:0"; "auto": CUDA when there is one; no sharding). The weights file's config must equal
        config.json's (and ``config``'s when given): a mismatch raises WeightFileError.
        """
        if model_args:
            raise TypeError(
                f"from_pretrained takes no positional model arguments, got {model_args}"
            )
        for ignored in _IGNORED_LOAD_KWARGS:
            kwargs.pop(ignored, None)
        if kwargs.get("subfolder") in ("", None):
            kwargs.pop("subfolder", None)
        if kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained does not support {sorted(kwargs)} (flashcore "
                "loads canonical weights onto one device)"
            )
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        hub.update(token=token, force_download=force_download)
        directory, path = pretrained.weights_file(pretrained_model_name_or_path, **hub)
        lm = io.load_canonical(path)
        pretrained.check_config_json(directory, lm.config)
        if config is None:
            config = FlashcoreConfig.from_pretrained(directory)
        elif not isinstance(config, FlashcoreConfig):
            raise TypeError(f"config must be a FlashcoreConfig, got {type(config).__name__}")
        if config.lm_config != lm.config:
            raise WeightFileError(
                f"{path}: holds weights for {lm.config!r}, not for the given config "
                f"{config.lm_config!r}"
            )
        dtype = dtype if dtype is not None else torch_dtype
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        if isinstance(dtype, torch.dtype):
            lm = lm.to(dtype)
        if device_map is not None:
            if isinstance(device_map, dict):
                raise TypeError("device_map: flashcore places the whole model on one device")
            if device_map == "auto":
                device_map = "cuda" if torch.cuda.is_available() else "cpu"
            lm = lm.to(device_map)
        model = cls(config, lm=lm)
        if (directory / pretrained.GENERATION_CONFIG_NAME).is_file():  # generate's saved defaults
            model.generation_config = GenerationConfig.from_pretrained(directory)
        model.name_or_path = str(pretrained_model_name_or_path)
        model.eval()
        return model


class FlashcoreForCausalLM(FlashcorePreTrainedModel, GenerationMixin):
    """A flashcore LM (:class:`flashcore.torch.LM`, as ``self.model``) as a transformers
    causal LM.

    ``FlashcoreForCausalLM(config, seed=0)`` initialises as ``flashcore.init(lm_config, 0)``;
    :meth:`from_flashcore` wraps an existing ``flashcore.torch.LM`` (sharing its parameters).
    ``forward`` returns :class:`CausalLMOutputWithPast`; with ``labels`` its ``loss`` is the mean
    next-token cross-entropy with transformers' shift (logits at t predict ``labels[:, t + 1]``;
    -100 is ignored), computed from the final hidden states with the head and the cross-entropy
    run chunk by chunk (``flashcore.loss.linear_cross_entropy``).
    """

    accepts_loss_kwargs = False  # the loss is a mean over its own tokens (Trainer: no rescaling)

    _cache_capacity: int | None = None  # positions a key/value cache holds (set by generate)

    @property
    def incremental(self) -> bool:
        """True when ``generate`` decodes incrementally: FLASH's constant-size state, or the
        key/value cache of a Transformer++ LM or a one-layer GAU LM (:func:`flashcore.decode.
        decode_method`); False where only the full forward is exact (several GAU layers)."""
        return self.model.decode_method in ("state", "cache")

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: FlashcoreDecodeState | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: FlashcoreDecodeState | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids: (b, t) ints; attention_mask: (b, t), 1 = real; labels: (b, t) ints
        -> logits (b, t, v) float, loss () when labels are given, cache when decoding.

        ``cache`` (``past_key_values`` is the older name): a :class:`FlashcoreDecodeState`; the
        tokens are fed one by one through ``decode_step`` after what it has seen, and the
        returned logits are those of these tokens. ``use_cache=True`` without a cache starts one
        (``generate`` does this) for FLASH blocks; GAU and Transformer++ blocks have no
        incremental decoder and ignore it (no cache returned). Otherwise (the default) the
        logits come from the full parallel forward, ``flashcore.lm_logits``.
        """
        if inputs_embeds is not None:
            raise ValueError("FlashcoreForCausalLM takes input_ids (token ids), not inputs_embeds")
        mask = self._padding(input_ids, attention_mask)
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("give cache or past_key_values, not both")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, FlashcoreDecodeState):
            raise TypeError(
                f"cache must be a FlashcoreDecodeState (the LM's decoding state), got "
                f"{type(cache).__name__}"
            )
        decoding = cache is not None or (bool(use_cache) and self.incremental)
        if decoding:
            logits, cache = self._decode(input_ids, mask, cache)
        else:
            if mask is not None and mask.shape[1] != input_ids.shape[1]:
                raise ValueError(
                    f"attention_mask covers {mask.shape[1]} positions, input_ids {input_ids.shape[1]}"
                )
            h = self.model.hidden(input_ids, mask=mask)  # (b, t, d)
            logits = fc.lm.head(self.model.canonical_params(), h, self.model.config, xp)
            cache = None
        loss = None
        if labels is not None:  # chunked from the hidden states, or from the decoded logits
            loss = self._loss(logits, labels) if decoding else self._head_loss(h, labels)
        if return_dict is False:
            return tuple(x for x in (loss, logits, cache) if x is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _decode(
        self, input_ids: torch.Tensor, mask: torch.Tensor | None, cache
    ) -> tuple[torch.Tensor, FlashcoreDecodeState]:
        """Feed input_ids (b, t) through decode_step after the cache -> logits (b, t, v)."""
        if not self.incremental:
            raise ValueError(
                "this LM has no exact incremental decoder (several GAU layers dividing by the "
                "growing length rerun the full forward); call it without a cache"
            )
        if mask is not None and not bool(mask.all()):
            raise ValueError(
                "the decoding state takes no padding: give unpadded rows of equal length "
                "(attention_mask all ones)"
            )
        b, t = input_ids.shape
        if cache is None:
            cache = FlashcoreDecodeState(self.model.decode_init(b, capacity=self._capacity(t)))
        elif cache.batch_size != b:
            raise ValueError(f"the cache holds {cache.batch_size} rows, input_ids {b}")
        state, steps = cache.state, []
        for i in range(input_ids.shape[1]):
            logits_t, state = self.model.decode_step(input_ids[:, i], state)  # (b, v)
            steps.append(logits_t)
        cache.state, cache.seen = state, cache.seen + input_ids.shape[1]
        return torch.stack(steps, dim=1), cache

    @staticmethod
    def _shifted(labels: torch.Tensor, like: torch.Tensor):
        """transformers' causal-LM convention: position t predicts labels[:, t + 1]; -100 is
        ignored. labels: (b, t) -> targets (b, t - 1) (0 where ignored), counted (b, t - 1) bool."""
        if labels.shape != like.shape[:2]:
            raise ValueError(
                f"labels must be (batch, time) = {tuple(like.shape[:2])}, got {tuple(labels.shape)}"
            )
        targets = labels[:, 1:].to(like.device)  # (b, t - 1)
        keep = targets != IGNORE_INDEX
        return torch.where(keep, targets, torch.zeros_like(targets)), keep

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean over the counted tokens of decoded logits (b, t, v) (``flashcore.cross_entropy``)."""
        targets, keep = self._shifted(labels, logits)
        return LM.cross_entropy(logits[:, :-1], targets, keep)

    def _head_loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The same from the final hidden states h (b, t, d), the head and the cross-entropy run
        chunk by chunk (:meth:`flashcore.torch.LM.head_loss`)."""
        targets, keep = self._shifted(labels, h)
        return self.model.head_loss(h[:, :-1], targets, keep)

    # -- generation ------------------------------------------------------------------------
    def _capacity(self, t: int) -> int | None:
        """Positions a new key/value cache holds (None for FLASH's state): what ``generate``
        will reach, else at least ``t`` and the generation config's ``max_length``."""
        if self.model.decode_method != "cache":
            return None
        if self._cache_capacity is not None:
            return max(self._cache_capacity, t)
        return max(t, int(self.generation_config.max_length or 0))

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers' ``generate``. A key/value cache (Transformer++, one-layer GAU) is made
        for the prompt plus ``max_new_tokens`` (or ``max_length``) positions; where the layer
        cannot hold that many (a learned relative bias spans ``max_len``), every step reruns
        the full forward instead (``use_cache=False``), as it always did."""
        if self.model.decode_method != "cache":
            return super().generate(inputs, generation_config, **kwargs)
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        gc = generation_config if generation_config is not None else self.generation_config
        new = kwargs.get("max_new_tokens", gc.max_new_tokens)
        t0 = 0 if ids is None else int(ids.shape[-1])
        total = t0 + new if new is not None else kwargs.get("max_length", gc.max_length)
        try:
            self.model.decode_init(1, capacity=int(total))  # zeros: checks the capacity
        except ValueError:
            kwargs["use_cache"] = False
        previous, self._cache_capacity = self._cache_capacity, int(total)
        try:
            return super().generate(inputs, generation_config, **kwargs)
        finally:
            self._cache_capacity = previous

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is FlashcoreDecodeState, made by the first forward

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: FlashcoreDecodeState | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: FlashcoreDecodeState | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """With incremental decoding: the tokens the state has not seen (the prompt first, then
        one per step) and the state; otherwise the whole sequence every step, no cache."""
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if not (self.incremental and use_cache):
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        seen = 0 if cache is None else cache.seen
        if seen >= input_ids.shape[1]:
            raise ValueError(
                f"the cache has seen {seen} tokens; input_ids ({input_ids.shape[1]}) must go past"
            )
        new_mask = None if attention_mask is None else attention_mask[:, seen:]
        return {
            "input_ids": input_ids[:, seen:],
            "attention_mask": new_mask,
            "cache": cache,
            "use_cache": True,
        }


class FlashcoreForMaskedLM(FlashcorePreTrainedModel):
    """A bidirectional flashcore LM (``causal=False`` blocks, :mod:`flashcore.mlm`) as a
    transformers masked LM: ``AutoModelForMaskedLM`` and ``pipeline("fill-mask")``.

    ``forward`` returns :class:`MaskedLMOutput`: logits (b, t, v) at every position and, with
    ``labels`` (b, t; -100 where not counted, no shift), the mean cross-entropy of the counted
    positions. The mask token is the vocabulary's last id (``flashcore train --objective mlm``'s).
    """

    def __init__(self, config: FlashcoreConfig, *, seed: int | None = None, lm: LM | None = None):
        if config.lm_config.block.causal:
            raise ValueError(
                "FlashcoreForMaskedLM needs a bidirectional LM (causal=False blocks); a causal LM "
                "is a FlashcoreForCausalLM"
            )
        super().__init__(config, seed=seed, lm=lm)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **unused: Any,
    ) -> MaskedLMOutput | tuple:
        """input_ids: (b, t) ints; attention_mask: (b, t), 1 = real; token_type_ids: (b, t) ints
        (LMs with token types); labels: (b, t) ints, -100 = not counted -> logits (b, t, v),
        loss () when labels are given."""
        if inputs_embeds is not None:
            raise ValueError("FlashcoreForMaskedLM takes input_ids (token ids), not inputs_embeds")
        mask = self._padding(input_ids, attention_mask)
        h = self.model.hidden(input_ids, mask=mask, token_type_ids=token_type_ids)  # (b, t, d)
        logits = fc.lm.head(self.model.canonical_params(), h, self.model.config, xp)  # (b, t, v)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels must be (batch, time) = {tuple(logits.shape[:2])}, got "
                    f"{tuple(labels.shape)}"
                )
            keep = labels != IGNORE_INDEX
            if mask is not None:
                keep = keep & mask
            targets = torch.where(keep, labels, torch.zeros_like(labels))
            loss = self.model.head_loss(h, targets, keep)  # chunked: no (b, t, v) for the loss
        if return_dict is False:
            return tuple(x for x in (loss, logits) if x is not None)
        return MaskedLMOutput(loss=loss, logits=logits)


# -- tokenizers ------------------------------------------------------------------------------

TOKENIZER_NAME = "tokenizer.json"
MASK_TOKEN = "[MASK]"


def is_byte_vocabulary(config: fc.LMConfig) -> bool:
    """True when the LM's ids are bytes: 256, plus the mask token (id 256) for a masked LM."""
    return config.vocab_size == 256 + (0 if config.block.causal else 1)


def _byte_chars() -> list[str]:
    """The printable stand-in of each byte that byte-level BPE (GPT-2, ``tokenizers``' ByteLevel)
    uses: printable Latin-1 bytes are themselves, the other 68 map to chr(256 + k) in order."""
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def byte_tokenizer(*, mask: bool = False):
    """A ``tokenizers.Tokenizer`` whose id of each byte is the byte (ids 0-255: flashcore's byte
    LMs); ``mask``: plus :data:`MASK_TOKEN` at id 256 (byte masked LMs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if mask:
        tok.add_special_tokens([MASK_TOKEN])
    return tok


def save_tokenizer(
    directory: str | os.PathLike, config: fc.LMConfig, source: str | os.PathLike | None = None
) -> None:
    """Write the tokenizer of an LM with ``config`` into ``directory`` (tokenizer.json,
    tokenizer_config.json: what ``AutoTokenizer.from_pretrained`` and ``pipeline`` read).

    ``source``: the tokenizer.json that made the LM's ids (a run's copy); None: the byte tokenizer
    (:func:`byte_tokenizer`; the vocabulary must be bytes). A masked LM's mask token is its last
    id (:data:`MASK_TOKEN`). ValueError when the tokenizer and the vocabulary disagree."""
    from transformers import PreTrainedTokenizerFast

    masked = not config.block.causal
    if source is None:
        if not is_byte_vocabulary(config):
            raise ValueError(
                f"a vocabulary of {config.vocab_size} ids is not bytes: give the tokenizer.json "
                "that made the ids"
            )
        tok = byte_tokenizer(mask=masked)
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(source))
        if masked:
            tok.add_special_tokens([MASK_TOKEN])
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != config.vocab_size if masked else size > config.vocab_size:
        raise ValueError(
            f"{source or 'the byte tokenizer'}: {size} ids{' with the mask token' if masked else ''}"
            f", but the LM's vocabulary has {config.vocab_size}"
        )
    if masked and tok.token_to_id(MASK_TOKEN) != config.vocab_size - 1:
        raise ValueError(
            f"{source}: its mask token is not the LM's last id {config.vocab_size - 1}"
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        mask_token=MASK_TOKEN if masked else None,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(directory))


def _t(t: torch.Tensor) -> torch.Tensor:
    return t.mT


AutoConfig.register(pretrained.MODEL_TYPE, FlashcoreConfig, exist_ok=True)
AutoModelForCausalLM.register(FlashcoreConfig, FlashcoreForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(FlashcoreConfig, FlashcoreForMaskedLM, exist_ok=True)
