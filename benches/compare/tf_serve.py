"""`transformers serve`, plus the one request field a fair benchmark needs.

Runs exactly the `transformers serve` CLI (same arguments, same server, same
generation code), with one shim: the request field `ignore_eos` (vLLM's, sent
by `inferd bench` so that every request produces the number of tokens it asked
for) is accepted instead of rejected with 422 "Unexpected fields", and honoured:

  * without continuous batching (model.generate): min_new_tokens = max_new_tokens,
    which masks EOS until the length is reached;
  * with --continuous-batching: the request's eos_token_id is -1, which the CB
    scheduler reads as "no EOS" (transformers' own convention).

And one fix: transformers 5.23's serve cannot load a GGUF at all. It picks the
model class from `config.architectures[0]`, but a config read from a GGUF has
no `architectures` (None), so start-up dies with "TypeError: 'NoneType' object
is not subscriptable" in model_manager._load_model. The shim fills
`architectures` from the GGUF's model_type with the causal-LM class that
AutoModelForCausalLM would pick (llama -> LlamaForCausalLM).

Nothing else is changed, so the speed measured is transformers' own.
Usage: python tf_serve.py serve [transformers serve options] <folder>:<file>.gguf
"""

import sys

from transformers.cli.serving import chat_completion, completion, utils


def _shim() -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_from_pretrained = AutoConfig.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        out = config_from_pretrained(cls, *args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out  # (config, unused) with return_unused_kwargs
        if kwargs.get("gguf_file") and not getattr(config, "architectures", None):
            arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            if arch is not None:
                config.architectures = [arch]
        return out

    AutoConfig.from_pretrained = classmethod(from_pretrained)

    validate = utils.BaseHandler._validate_request

    def _validate_request(self, body: dict) -> None:
        if "ignore_eos" in body:
            body = {k: v for k, v in body.items() if k != "ignore_eos"}
        return validate(self, body)

    utils.BaseHandler._validate_request = _validate_request

    for cls in (completion.CompletionHandler, chat_completion.ChatCompletionHandler):

        def _build_generation_config(self, body, model_generation_config, use_cb=False, _orig=cls._build_generation_config):
            config = _orig(self, body, model_generation_config, use_cb=use_cb)
            if body.get("ignore_eos"):
                if use_cb:
                    config.eos_token_id = -1
                else:
                    config.min_new_tokens = config.max_new_tokens
            return config

        cls._build_generation_config = _build_generation_config


if __name__ == "__main__":
    _shim()
    from transformers.cli.transformers import app

    sys.argv[0] = "transformers"
    app()
