"""A causal LM as a policy: G sampled completions per prompt with per-token log-probabilities at
the sampling temperature, completion masks, and the same scoring function for rollout and update
(so the ratio at an update's first step is exactly 1)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "llm_toy"


@dataclass
class Completions:
    """B sampled completions. ids [B, P + T]: left-padded prompts then completions (right-padded);
    attention [B, P + T]; mask [B, T]: completion tokens up to and including EOS; logp [B, T]: their
    log-probabilities when sampled; truncated [B]: no EOS within the limit; prompt [B]: the index of
    each completion's prompt row; texts: the decoded completions."""

    ids: torch.Tensor
    attention: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor
    truncated: torch.Tensor
    prompt: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.ids.shape[1] - self.mask.shape[1]

    def completion_ids(self) -> list[list[int]]:
        """Each completion's token ids, EOS excluded (TRL's `completion_ids` reward column)."""
        tokens = self.ids[:, self.prompt_length :]
        lengths = (self.mask.sum(dim=1) - (~self.truncated).long()).tolist()
        return [tokens[i, :n].tolist() for i, n in enumerate(lengths)]

    @staticmethod
    def cat(parts: list[Completions], pad: int) -> Completions:
        """One batch from several (prompt sections left-padded, completions right-padded to fit);
        `prompt` indices are kept as given."""
        prompt_width = max(p.prompt_length for p in parts)
        width = max(p.mask.shape[1] for p in parts)

        def fit(tensor: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (left, right), value=value)

        ids, attention, mask, logp = [], [], [], []
        for p in parts:
            left, right = prompt_width - p.prompt_length, width - p.mask.shape[1]
            ids.append(fit(p.ids, left, right, pad))
            attention.append(fit(p.attention, left, right, 0))
            mask.append(fit(p.mask, 0, right, False))
            logp.append(fit(p.logp, 0, right, 0.0))
        return Completions(
            torch.cat(ids),
            torch.cat(attention),
            torch.cat(mask),
            torch.cat(logp),
            torch.cat([p.truncated for p in parts]),
            torch.cat([p.prompt for p in parts]),
            [t for p in parts for t in p.texts],
        )

    def select(self, index: torch.Tensor) -> Completions:
        index = torch.as_tensor(index)
        rows = torch.nonzero(index).flatten() if index.dtype == torch.bool else index
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: (v[rows.to(v.device)] if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
        values["texts"] = [self.texts[int(i)] for i in rows]
        return Completions(**values)


def is_text_source(name: str) -> bool:
    """'llm_toy' (the shipped model) or a transformers causal-LM folder (its config.json names a
    *ForCausalLM architecture)."""
    if name == "llm_toy":
        return True
    config = Path(name) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


class TextPolicy:
    """A transformers causal LM and its tokenizer, for group-relative RL on completions."""

    native_benchmark = None
    sample_shape = ()

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device) -> None:
        self.network, self.tokenizer, self.device = model, tokenizer, device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    def trainable_parameters(self):
        return (p for p in self.network.parameters() if p.requires_grad)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 32,
        stop: list[str] | None = None,
        seed: int = 0,
        greedy: bool = False,
        max_batch: int = 256,
    ) -> Completions:
        """n completions of each prompt (rows i*n ... i*n + n - 1 for prompt i), reproducible from `seed`."""
        torch.manual_seed(seed)
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        ids = encoded["input_ids"].repeat_interleave(n, 0).to(self.device)
        attention = encoded["attention_mask"].repeat_interleave(n, 0).to(self.device)
        options = dict(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if not greedy:
            options.update(temperature=temperature, top_p=top_p, top_k=0)
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        was_training = self.network.training
        self.network.eval()
        outputs = [
            self.network.generate(
                input_ids=ids[i : i + max_batch], attention_mask=attention[i : i + max_batch], **options
            )
            for i in range(0, len(ids), max_batch)
        ]
        self.network.train(was_training)
        width = max(o.shape[1] for o in outputs)
        sequences = torch.cat(
            [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=self.tokenizer.pad_token_id) for o in outputs]
        )
        completion = sequences[:, ids.shape[1] :]
        mask, truncated = completion_mask(completion, self.tokenizer.eos_token_id)
        full_attention = torch.cat([attention, mask.long()], dim=1)
        result = Completions(
            sequences,
            full_attention,
            mask,
            torch.zeros(mask.shape, device=self.device),
            truncated,
            torch.arange(len(prompts)).repeat_interleave(n),
            self.tokenizer.batch_decode(
                torch.where(mask, completion, self.tokenizer.pad_token_id), skip_special_tokens=True
            ),
        )
        result.logp = self.token_logps(result, temperature=temperature, max_batch=max_batch).detach()
        return result

    def token_logps(self, completions: Completions, temperature: float = 1.0, max_batch: int = 256) -> torch.Tensor:
        """[B, T] log-probabilities of the completion tokens at `temperature` (0 at masked positions),
        with grad when enabled. Positions follow the attention mask, as in generation."""
        parts = []
        start = completions.prompt_length
        for i in range(0, len(completions), max_batch):
            ids = completions.ids[i : i + max_batch]
            attention = completions.attention[i : i + max_batch]
            positions = (attention.cumsum(-1) - 1).clamp_min(0)
            logits = self.network(input_ids=ids, attention_mask=attention, position_ids=positions).logits
            logits = logits[:, start - 1 : -1].float() / temperature
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, start:, None]).squeeze(-1)
            parts.append(torch.where(completions.mask[i : i + max_batch], logp, torch.zeros_like(logp)))
        return torch.cat(parts)

    def export(self, directory: str | Path, lora: bool, network: torch.nn.Module | None = None) -> Path:
        """The trained model (LoRA merged into a copy) and tokenizer as a transformers folder."""
        directory = Path(directory)
        model = network if network is not None else self.network
        if lora:
            import copy

            from peft.tuners.tuners_utils import BaseTunerLayer

            model = copy.deepcopy(model)
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.merge()
            model = unwrap_lora(model)
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory


def unwrap_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Replace merged LoRA layers by their base layers, so the saved folder loads without peft."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    return model


def completion_mask(completion: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] tokens up to and including the first EOS, [B] no EOS at all)."""
    is_eos = completion == eos
    truncated = ~is_eos.any(dim=1)
    first = torch.where(truncated, completion.shape[1], is_eos.int().argmax(dim=1))
    mask = torch.arange(completion.shape[1], device=completion.device)[None, :] <= first[:, None]
    return mask, truncated


def load_text_policy(source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TextPolicy:
    """A TextPolicy from 'llm_toy' or a transformers folder (or hub id)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(SHIPPED) if source == "llm_toy" else source
    if source == "llm_toy" and not (SHIPPED / "model.safetensors").is_file():
        raise ValueError("policy=llm_toy: the shipped model is missing; run `flowrl pretrain-llm-toy --ship`")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise ValueError(f"policy={source!r}: cannot load a causal LM and tokenizer there ({error})") from None
    device = torch.device(device)
    return TextPolicy(model.to(device), tokenizer, device)
