"""What differs between the two backbone families, in one place.

Shards hold `source_ids` (`<s> context </s>`), `prefix_ids` (`tok(" mention is")`) and
`target_ids` (`tok(" name") + [eos]`), and the reader pads them into `source_ids/mask` and
decoder rows `[decoder_start] + prefix + target` with a `target_mask`. A family turns those into
model calls:

- seq2seq (BART): the encoder reads the source; the decoder reads `[decoder_start] + prefix`
  and writes the target.
- causal (decoder-only, Llama-style): one row per input, `source_ids[:-1] + prefix_ids +
  target_ids`: the context without the `</s>` that closes it for an encoder (an eos inside a row
  would read as the end of a document to a pretrained model, and a tokenizer never puts one
  there, so TRL's tokenization of the exported `prompt` gives the same row), then the prefix and
  the target. Rows are left-padded with position ids counted from each row's first token, so
  every row ends at the last column: the target positions are the last columns (their logits
  alone are computed) and a search's new tokens append to every row alike.

The log-prob function (logprob.py), the search (decode/beam.py), mining and training call the
family of their model (`family_of`) and never ask which one it is.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch

SEQ2SEQ_PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256),
    "small": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
}
# Llama shapes (RoPE, RMSNorm, SwiGLU, tied embeddings) with the parameters of the BART preset of
# the same size to within 5% (README): BART's 2 + 2 (4 + 4, 6 + 6) layers of width d hold ~56 (112,
# 168) d^2 weights, these 4 (8, 12) SwiGLU layers 4 d^2 + 3 d * ffn each; tiny's wider SwiGLU stands
# in for BART's learned positions (2 x 1026 x d, a fifth of its weights), which RoPE does without.
CAUSAL_PRESETS: dict[str, dict] = {
    "tiny-causal": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=352),
    "small-causal": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=896),
    "base-causal": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2560),
}
MAX_POSITIONS = 1024  # sources are capped at 700 tokens; prefix and name fit in the rest


def _cache_argument(model) -> str:
    # transformers 5 renamed `past_key_values` to `cache`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _bare(model):
    """The model itself: a DeepSpeed engine standing in for it holds its own (DeepSpeed) `config`."""
    return getattr(model, "module", model)


class Family:
    name: str
    presets: dict[str, dict]

    def preset_model(self, name: str, tokenizer):
        """A freshly initialized model of preset `name` with the tokenizer's vocabulary and ids."""
        raise NotImplementedError

    def load(self, path: str, dtype: torch.dtype):
        """(model, loading info) from a local directory or the HF cache, its parameters in `dtype`
        (transformers' output_loading_info: the weights it found no tensor for are in `missing_keys`)."""
        raise NotImplementedError

    def batch_ids(self, model, tokenizer) -> dict:
        """`pad_id` and `decoder_start_id` for the reader's collate."""
        raise NotImplementedError

    def rows(self, model, source_mask, decoder_ids, decoder_mask, target_mask, source_ids=None,
             encoder_states=None) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """(keyword arguments of the model call, ids, target mask): the model's logits are those of
        the last `ids.shape[1]` positions of its rows, which hold `ids`; `target_mask` marks the
        target tokens among `ids` (the logits at position t predict token t + 1)."""
        raise NotImplementedError

    def shared_source(self, model, source_ids, source_mask, copies: int) -> dict:
        """`score`'s source argument for `copies` decoder rows per input (DPO's chosen and rejected)."""
        raise NotImplementedError

    def steps(self, model) -> "Steps":
        raise NotImplementedError

    def tokenizer(self, tokenizer):
        """The tokenizer as this family's models read text (what is saved beside a model)."""
        return tokenizer

    def generate_inputs(self, model, source_ids: list[int], prefix_ids: list[int]) -> dict:
        """HF `generate`'s inputs for one input, everything up to the name (bench/decode.py's
        baseline): the row it extends (`decoder_input_ids`, else `input_ids`) ends at the name."""
        raise NotImplementedError


class Steps:
    """The model calls of a search (shared with the model-forward floor of bench/decode.py).

    `first` reads each input's source and prefix (both right-padded, with their masks: prefixes
    may differ in length) and returns the logits of the first name token [B, V];
    `select(rows, examples)` keeps cache row `rows[j]` as row j (the beams' parents), `examples`
    is given when the number of rows changes and names for each new row a row of its input; `step(tokens)` feeds one token per row through the cache and returns the next logits."""

    def first(self, source_ids: torch.Tensor, source_mask: torch.Tensor, prefix: torch.Tensor,
              prefix_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, rows: torch.Tensor, examples: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def padding_id(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad, else its eos (Llama's tokenizers
    have no pad; padded positions are masked, so any id serves)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_join(a: torch.Tensor, a_len: torch.Tensor, b: torch.Tensor, b_len: torch.Tensor):
    """Rows `a[i, :a_len[i]] + b[i, :b_len[i]]`, left-padded to the longest: (ids [B, N], mask,
    from_b: the position's index into b's row, -1 where it is not from b). Padded positions
    repeat a valid id of the row (they are masked). Not TRL's `pad`: it pads a list of tensors,
    these rows are joined from two padded batches on the device in one gather; and importing trl
    (its trainers come with it) would cost every search actor seconds."""
    n = a_len + b_len
    width = int(n.max())
    k = torch.arange(width, device=a.device)[None] - (width - n)[:, None]  # index in the row; < 0: padding
    in_a = k < a_len[:, None]
    ib = k - a_len[:, None]
    ids = torch.where(in_a, a.gather(1, k.clamp(0, a.shape[1] - 1)), b.gather(1, ib.clamp(0, b.shape[1] - 1)))
    return ids, k >= 0, torch.where(in_a, -1, ib)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each left-padded row's first token (0 on padding)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


# -- seq2seq -----------------------------------------------------------------------------------


def encode(model, source_ids: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
    """Encoder states [B, S, H], to share one encoder pass between several decoder rows."""
    return model.get_encoder()(input_ids=source_ids, attention_mask=source_mask).last_hidden_state


class Seq2Seq(Family):
    name = "seq2seq"
    presets = SEQ2SEQ_PRESETS

    def preset_model(self, name, tokenizer):
        from transformers import BartConfig, BartForConditionalGeneration

        return BartForConditionalGeneration(BartConfig(
            vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=None,
            forced_eos_token_id=tokenizer.eos_token_id, **self.presets[name]))

    def load(self, path, dtype):
        from transformers import BartForConditionalGeneration

        return BartForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                            output_loading_info=True)

    def batch_ids(self, model, tokenizer):
        return {"pad_id": tokenizer.pad_token_id, "decoder_start_id": _bare(model).config.decoder_start_token_id}

    def rows(self, model, source_mask, decoder_ids, decoder_mask, target_mask, source_ids=None, encoder_states=None):
        # One call of the model, the encoder in it when it runs here: a DeepSpeed engine standing
        # in for the model (training) then sees the whole forward pass.
        source = {"input_ids": source_ids} if encoder_states is None else {"encoder_outputs": (encoder_states,)}
        return ({"attention_mask": source_mask, "decoder_input_ids": decoder_ids,
                 "decoder_attention_mask": decoder_mask, **source}, decoder_ids, target_mask)

    def shared_source(self, model, source_ids, source_mask, copies):
        return {"encoder_states": torch.cat([encode(model, source_ids, source_mask)] * copies)}

    def steps(self, model):
        return Seq2SeqSteps(model)

    def generate_inputs(self, model, source_ids, prefix_ids):
        device = next(model.parameters()).device
        return {"input_ids": torch.tensor([source_ids], device=device),
                "decoder_input_ids": torch.tensor([[model.config.decoder_start_token_id, *prefix_ids]], device=device)}


class Seq2SeqSteps(Steps):
    """The encoder once per input, `[decoder_start] + prefix` in one decoder pass, then one cached
    decoder step per token. The cross-attention cache holds the same keys and values for every
    beam of an input, so only the self-attention cache follows the beams' parents.

    Decoder rows of inputs whose prefixes differ in length are left-padded (masked), so every
    row's next token sits in the same cache column. BART's decoder counts positions from the
    cache's length for all rows alike and takes no position ids: a row padded by `s` columns is
    given its own positions by feeding embeddings moved by P(t - s) - P(t) (P the learned position
    table). A batch of one prefix length runs on token ids as the model's own forward does."""

    def __init__(self, model):
        self.model = model
        self.cache_arg = _cache_argument(model)
        self.start = model.config.decoder_start_token_id
        self.padded = False  # whether some decoder rows are left-padded (their positions are fed)

    def first(self, source_ids, source_mask, prefix, prefix_mask):
        self.states, self.mask = encode(self.model, source_ids, source_mask), source_mask
        lengths = prefix_mask.sum(1)
        start = torch.full((len(prefix), 1), self.start, dtype=torch.long, device=prefix.device)
        ids, decoder_mask, _ = left_join(start, torch.ones_like(lengths), prefix, lengths)
        self.padded = bool((lengths < prefix.shape[1]).any())
        if not self.padded:
            inputs = {"decoder_input_ids": ids}
        else:
            self.decoder_mask = decoder_mask
            self.position = positions(decoder_mask)[:, -1]
            inputs = {"decoder_inputs_embeds": self._embed(ids, positions(decoder_mask), 0),
                      "decoder_attention_mask": decoder_mask}
        out = self.model(attention_mask=self.mask, encoder_outputs=(self.states,), use_cache=True, **inputs)
        self.cache = _output_cache(out)
        return out.logits[:, -1]

    def _embed(self, ids, own_positions, cache_length: int):
        """Token embeddings the decoder turns into those of `ids` at `own_positions`, once it adds
        the positions it counts from `cache_length` itself."""
        decoder = self.model.get_decoder()
        table = decoder.embed_positions
        own = torch.nn.functional.embedding(own_positions + table.offset, table.weight)
        return decoder.embed_tokens(ids) + (own - table(ids, cache_length))

    def select(self, rows, examples=None):
        self.cache.self_attention_cache.reorder_cache(rows)
        if examples is not None:
            self.cache.cross_attention_cache.reorder_cache(examples)
            self.states, self.mask = self.states.index_select(0, examples), self.mask.index_select(0, examples)
        if self.padded:
            self.decoder_mask, self.position = self.decoder_mask.index_select(0, rows), self.position.index_select(0, rows)

    def step(self, tokens):
        if not self.padded:
            inputs = {"decoder_input_ids": tokens[:, None]}
        else:
            self.position = self.position + 1
            self.decoder_mask = torch.cat([self.decoder_mask, self.decoder_mask.new_ones((len(tokens), 1))], 1)
            inputs = {"decoder_inputs_embeds": self._embed(tokens[:, None], self.position[:, None],
                                                           self.decoder_mask.shape[1] - 1),
                      "decoder_attention_mask": self.decoder_mask}
        out = self.model(attention_mask=self.mask, encoder_outputs=(self.states,), use_cache=True,
                         **{self.cache_arg: self.cache}, **inputs)
        return out.logits[:, -1]


# -- causal ------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _keeps_logits(model_class) -> bool:
    """Whether the model's forward can compute the logits of its last positions only (transformers'
    causal LMs mostly can; what generate checks too)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


class Causal(Family):
    name = "causal"
    presets = CAUSAL_PRESETS

    def preset_model(self, name, tokenizer):
        from transformers import LlamaConfig, LlamaForCausalLM

        shape = self.presets[name]
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
            num_key_value_heads=shape["num_attention_heads"], bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape))

    def load(self, path, dtype):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                    output_loading_info=True)

    def batch_ids(self, model, tokenizer):
        # The reader's decoder rows start with a placeholder that `rows` drops.
        pad = padding_id(tokenizer)
        return {"pad_id": pad, "decoder_start_id": pad}

    def _call(self, model, ids, mask, keep: int) -> dict:
        extra = {"logits_to_keep": keep} if _keeps_logits(type(_bare(model))) else {}
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask), **extra}

    def rows(self, model, source_mask, decoder_ids, decoder_mask, target_mask, source_ids=None, encoder_states=None):
        if source_ids is None:
            raise ValueError("a causal model reads the source in its rows: pass source_ids")
        ids, mask, from_b = left_join(source_ids, source_mask.sum(1) - 1, decoder_ids[:, 1:], decoder_mask.sum(1) - 1)
        target = target_mask[:, 1:].gather(1, from_b.clamp(min=0)) & (from_b >= 0)
        # The targets end every row: the logits of the positions before them are all that is needed.
        keep = int(target.sum(1).max()) + 1
        return self._call(model, ids, mask, keep), ids[:, -keep:], target[:, -keep:]

    def shared_source(self, model, source_ids, source_mask, copies):
        return {"source_ids": torch.cat([source_ids] * copies)}

    def steps(self, model):
        return CausalSteps(self, model)

    def generate_inputs(self, model, source_ids, prefix_ids):
        return {"input_ids": torch.tensor([[*source_ids[:-1], *prefix_ids]], device=next(model.parameters()).device)}

    def tokenizer(self, tokenizer):
        """A causal LM's tokenizer opens a text with its bos (if it has one) and leaves it open: a
        BART-style tokenizer, which closes every text with eos, is rebuilt with that template (the
        vocabulary, merges and special tokens, hence the fingerprint, stay), so TRL and HF generate
        read our prompts as the rows the model was trained on."""
        if tokenizer("a")["input_ids"][-1] != tokenizer.eos_token_id:
            return tokenizer
        import copy

        from tokenizers.processors import TemplateProcessing
        from transformers import PreTrainedTokenizerFast

        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        bos = tokenizer.bos_token
        backend.post_processor = TemplateProcessing(
            single=f"{bos} $A" if bos else "$A", pair=f"{bos} $A $B" if bos else "$A $B",
            special_tokens=[(bos, tokenizer.bos_token_id)] if bos else [])
        return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer.special_tokens_map)


class CausalSteps(Steps):
    """Each input's row (context without its `</s>`, then the prefix) read once, left-padded,
    then one cached step per token over all beams. The beams of an input share its row, so while
    the number of rows stays, only the cache's generated columns follow the beams' parents."""

    def __init__(self, family: Causal, model):
        self.family, self.model = family, model
        self.cache_arg = _cache_argument(model)

    def first(self, source_ids, source_mask, prefix, prefix_mask):
        ids, self.mask, _ = left_join(source_ids, source_mask.sum(1) - 1, prefix, prefix_mask.sum(1))
        self.prompt = ids.shape[1]
        self.position = positions(self.mask)[:, -1]
        out = self.model(**self.family._call(self.model, ids, self.mask, 1), use_cache=True)
        self.cache = _output_cache(out)
        # Plain growing layers can reorder their generated columns alone; others (sliding windows) whole.
        from transformers.cache_utils import DynamicLayer

        self.partial = all(type(layer) is DynamicLayer for layer in getattr(self.cache, "layers", [None]))
        return out.logits[:, -1]

    def select(self, rows, examples=None):
        if examples is None and self.partial:
            for layer in self.cache.layers:
                layer.keys[:, :, self.prompt:] = layer.keys[rows, :, self.prompt:]
                layer.values[:, :, self.prompt:] = layer.values[rows, :, self.prompt:]
            return
        self.cache.reorder_cache(rows)
        self.mask, self.position = self.mask.index_select(0, rows), self.position.index_select(0, rows)

    def step(self, tokens):
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], 1)
        self.position = self.position + 1
        extra = {"logits_to_keep": 1} if _keeps_logits(type(_bare(self.model))) else {}
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.position[:, None],
                         use_cache=True, **{self.cache_arg: self.cache}, **extra)
        return out.logits[:, -1]


SEQ2SEQ, CAUSAL = Seq2Seq(), Causal()
FAMILIES = (SEQ2SEQ, CAUSAL)


def family_of(model) -> Family:
    """The family of a model (or of a DeepSpeed engine standing in for it)."""
    return SEQ2SEQ if _bare(model).config.is_encoder_decoder else CAUSAL


def family_of_preset(name: str) -> Family | None:
    return next((f for f in FAMILIES if name in f.presets), None)
