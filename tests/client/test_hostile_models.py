"""A hostile publication is refused by class, before any copy is loaded, trained or written: an
architecture the server cannot publish, buffers sized by the config alone, a depth stated under another
name, a ``tokenizer_class`` that names no tokenizer, a tensor of no model tensor (per-expert names only
as a MoE family's own experts), and a copy whose tokenizer or chat template cannot encode the run's rows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import save_file

from mpu.client.inbox import MAX_LAYERS, PublishedCopy, read_publication
from mpu.cli import main
from mpu.errors import InputError, MPUError
from mpu.reparam import ARCHITECTURES
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.client.test_hostile_copies import (  # noqa: F401  (outbox: a fixture)
    edit_json, edit_manifest, edit_tensors, outbox, rechecksum, refused, run_client,
)

COPIES = ("copy-1", "copy-2")


def inbox_of(outbox, tmp_path):  # noqa: F811
    inbox = tmp_path / "inbox"
    shutil.copytree(outbox, inbox)
    return inbox


def replace_models(inbox, config):
    """What a hostile server publishes: every copy a model of ``config`` (zero weights, the copy's own
    tokenizer files), the manifest naming its architecture."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    weights = {name: torch.zeros(tensor.shape) for name, tensor in model.state_dict().items()}
    for copy in COPIES:
        for path in (inbox / copy).glob("*.safetensors*"):
            path.unlink()
        save_file(weights, str(inbox / copy / "model.safetensors"), metadata={"format": "pt"})
        (inbox / copy / "config.json").write_text(json.dumps(config.to_dict()))
    edit_manifest(inbox, architecture=config.model_type)


def gptj(positions):
    return transformers.GPTJConfig(vocab_size=320, n_embd=8, n_layer=1, n_head=2, rotary_dim=4, n_positions=positions,
                                   bos_token_id=1, eos_token_id=2)


def gpt2(layers):
    return transformers.GPT2Config(vocab_size=320, n_embd=8, n_layer=layers, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2)


@pytest.fixture()
def builds(monkeypatch):
    """Every architecture transformers builds from a config (on the meta device or not)."""
    built = []
    real = transformers.AutoModelForCausalLM.from_config.__func__

    def spy(cls, config, *args, **kwargs):
        built.append(config.model_type)
        return real(cls, config, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", classmethod(spy))
    return built


# 1. only the architectures the server can publish; nothing sized by the config alone


def test_an_architecture_the_server_cannot_publish_is_refused_before_it_is_built(outbox, tmp_path, forget_file, capsys, monkeypatch, builds):
    inbox = inbox_of(outbox, tmp_path)
    replace_models(inbox, gptj(positions=4096))  # a consistent GPT-J: its causal sinusoid table is sized by n_positions
    rechecksum(inbox)
    builds.clear()

    refused(inbox, tmp_path, forget_file, capsys, monkeypatch,
            f"model_type 'gptj' is not an architecture mpu publishes; supported: {', '.join(ARCHITECTURES.names())}")
    assert builds == []


def test_buffers_sized_by_the_config_alone_are_refused_and_a_long_context_is_not(outbox, tmp_path):
    inbox = inbox_of(outbox, tmp_path)
    replace_models(inbox, gptj(positions=1 << 16))   # 262144 buffer values at load, 6280 parameters
    copy = PublishedCopy(1, inbox / "copy-1", "", inbox)

    with pytest.raises(InputError, match=r"config.json: the gptj architecture of this config builds buffers of 262144 values"):
        copy.check_weights()

    long_context = inbox_of(outbox, tmp_path / "long")
    edit_json(long_context / "copy-1" / "config.json", max_position_embeddings=131072)   # Llama 3.2's
    shapes = PublishedCopy(1, long_context / "copy-1", "", long_context).check_weights()
    assert "model.norm.weight" in shapes


# 2. the depth, under whatever name the config class stores it


def test_the_depth_is_bounded_under_every_name_of_the_config_class(outbox, tmp_path, forget_file, capsys, monkeypatch, builds):
    inbox = inbox_of(outbox, tmp_path)
    replace_models(inbox, gpt2(layers=1))
    for copy in COPIES:
        edit_json(inbox / copy / "config.json", n_layer=2 * MAX_LAYERS)   # GPT-2 says n_layer, not num_hidden_layers
    rechecksum(inbox)
    builds.clear()

    refused(inbox, tmp_path, forget_file, capsys, monkeypatch, f"config.json: n_layer (num_hidden_layers) must be an integer in [1, {MAX_LAYERS}]")
    assert builds == []


def test_the_parsed_configs_depth_is_bounded_before_the_architecture_is_built(outbox, tmp_path, builds):
    inbox = inbox_of(outbox, tmp_path)
    replace_models(inbox, gpt2(layers=1))
    edit_json(inbox / "copy-1" / "config.json", n_layer=2 * MAX_LAYERS)
    builds.clear()

    with pytest.raises(InputError, match=rf"config.json: num_hidden_layers must be an integer in \[1, {MAX_LAYERS}\]"):
        PublishedCopy(1, inbox / "copy-1", "", inbox).check_weights()
    assert builds == []


# 3. tokenizer_class names a tokenizer class, and what loads is a tokenizer


TOKENIZER_CLASSES = {
    "a config class": (lambda i: [edit_json(i / c / "tokenizer_config.json", tokenizer_class="LlamaConfig") for c in COPIES],
                       "tokenizer_config.json: tokenizer_class 'LlamaConfig' names LlamaConfig, which is not a tokenizer class"),
    "a model class": (lambda i: [edit_json(i / c / "tokenizer_config.json", tokenizer_class="LlamaForCausalLMFast") for c in COPIES],
                      "tokenizer_class 'LlamaForCausalLMFast' names LlamaForCausalLMFast, which is not a tokenizer class"),
    "not a string": (lambda i: [edit_json(i / c / "tokenizer_config.json", tokenizer_class=["LlamaTokenizer"]) for c in COPIES],
                     "tokenizer_class \"['LlamaTokenizer']\" is not the name of a transformers tokenizer class"),
    "no class of transformers": (lambda i: [edit_json(i / c / "tokenizer_config.json", tokenizer_class="EvilTokenizer") for c in COPIES],
                                 "tokenizer_class 'EvilTokenizer' is not a transformers tokenizer class"),
    # the pattern's $ let a trailing newline through; the whole name must match
    "a trailing newline": (lambda i: [edit_json(i / c / "tokenizer_config.json", tokenizer_class="LlamaTokenizerFast\n") for c in COPIES],
                           "tokenizer_class 'LlamaTokenizerFast\\n' is not the name of a transformers tokenizer class"),
    # transformers joins these to the copy's folder: a tokenizer from anywhere, outside the checksum and the size cap
    "a tokenizer file outside the copy": (
        lambda i: [edit_json(i / c / "tokenizer_config.json", fast_tokenizer_files=["/tmp/elsewhere/tokenizer.json"]) for c in COPIES],
        "tokenizer_config.json: fast_tokenizer_files names '/tmp/elsewhere/tokenizer.json', which is no file of this copy"),
    "a relative path out of the copy": (
        lambda i: [edit_json(i / c / "tokenizer_config.json", fast_tokenizer_files=["../../x/tokenizer.json"]) for c in COPIES],
        "fast_tokenizer_files names '../../x/tokenizer.json', which is no file of this copy"),
    "a context length that is no number": (
        lambda i: [edit_json(i / c / "tokenizer_config.json", model_max_length="abc") for c in COPIES],
        "tokenizer_config.json: model_max_length must be a positive number, got 'abc'"),
    "a vocabulary file elsewhere": (
        lambda i: [edit_json(i / c / "special_tokens_map.json", vocab_file="/etc/passwd") for c in COPIES
                   if (i / c / "special_tokens_map.json").exists()] or
                  [edit_json(i / c / "generation_config.json", vocab_file="/etc/passwd") for c in COPIES],
        "vocab_file names '/etc/passwd', which is no file of this copy"),
}




def test_a_tokenizer_class_is_resolved_under_each_spelling_autotokenizer_tries(outbox, tmp_path, forget_file, capsys, monkeypatch):
    from transformers.models.auto import tokenization_auto

    real = tokenization_auto.tokenizer_class_from_name
    # a transformers release where only the "Fast" spelling resolves, and to something that is no tokenizer
    monkeypatch.setattr(tokenization_auto, "tokenizer_class_from_name",
                        lambda name: transformers.LlamaConfig if name == "EvilTokenizerFast" else real(name))
    inbox = inbox_of(outbox, tmp_path)
    for copy in COPIES:
        edit_json(inbox / copy / "tokenizer_config.json", tokenizer_class="EvilTokenizer")
    rechecksum(inbox)

    refused(inbox, tmp_path, forget_file, capsys, monkeypatch,
            "tokenizer_config.json: tokenizer_class 'EvilTokenizer' names EvilTokenizerFast, which is not a tokenizer class")


def test_a_loaded_tokenizer_that_is_no_tokenizer_is_refused():
    # arrange: a tokenizer_class that transformers resolves to something else than a tokenizer (the
    # inbox refuses every such name it knows; this is the child's own check, behind it)
    from mpu.data.isolated import _loaded_reply

    # act
    reply = _loaded_reply(transformers.LlamaConfig())

    # assert
    assert reply == {"refused": "loads a LlamaConfig, not a tokenizer (tokenizer_class)"}


def test_the_client_never_loads_the_other_partys_tokenizer_itself(outbox, monkeypatch):
    # arrange: loading a tokenizer in the client's own process fails; the child is another process
    import mpu.client.unlearn as client_unlearn
    from mpu.data.isolated import OtherPartysTokenizer

    def loaded_here(*args, **kwargs):
        raise AssertionError("the client loaded the other party's tokenizer in its own process")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loaded_here)
    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "from_pretrained", loaded_here)
    monkeypatch.setattr(client_unlearn, "_TOKENIZERS", {})

    # act
    tokenizer = client_unlearn._tokenizer(read_publication(outbox).copies[0])

    # assert: what the client holds describes the tokenizer and cannot tokenize
    assert isinstance(tokenizer, OtherPartysTokenizer)
    assert tokenizer.eos_token_id is not None and tokenizer.chat_template
    with pytest.raises(MPUError, match="runs only in the child process"):
        tokenizer("Who wrote Hamlet?")


# 4. every stored tensor loads into a tensor of the architecture


def add_tensor(name, like="model.norm.weight"):
    def corrupt(inbox):
        for copy in COPIES:
            edit_tensors(inbox, like, lambda ts: ts.update({name: ts[like].clone()}), copy)
    return corrupt


EXTRA_TENSORS = {
    "junk.extra": (add_tensor("junk.extra"), "tensor junk.extra is not a tensor of the llama architecture"),
    "an expert in a dense model": (add_tensor("model.layers.0.mlp.experts.0.up_proj.weight", like="model.layers.0.mlp.up_proj.weight"),
                                   "tensor model.layers.0.mlp.experts.0.up_proj.weight is not a tensor of the llama architecture"),
    "a second source of one tensor": (add_tensor("norm.weight"), "tensors model.norm.weight and norm.weight both load into model.norm.weight"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_CLASSES) + sorted(EXTRA_TENSORS))
def test_a_tokenizer_class_of_no_tokenizer_or_a_tensor_of_no_model_tensor_is_refused_before_training(
        case, outbox, tmp_path, forget_file, capsys, monkeypatch):
    corrupt, reason = TOKENIZER_CLASSES.get(case) or EXTRA_TENSORS[case]
    inbox = inbox_of(outbox, tmp_path)
    corrupt(inbox)
    rechecksum(inbox)

    refused(inbox, tmp_path, forget_file, capsys, monkeypatch, reason)


MOE = {
    "qwen2_moe": (transformers.Qwen2MoeConfig, dict(intermediate_size=24, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=12,
                                                    shared_expert_intermediate_size=16, mlp_only_layers=[1]), "mlp", ("gate_proj", "up_proj")),
    "mixtral": (transformers.MixtralConfig, dict(intermediate_size=20, num_local_experts=4, num_experts_per_tok=2), "block_sparse_moe", ("w1", "w3")),
}


@pytest.fixture(scope="module")
def moe_outboxes(tmp_path_factory, tiny_tokenizer):
    """One publication per MoE family: per-expert tensors on disk, as save_pretrained writes them."""
    root = tmp_path_factory.mktemp("hostile-moe")
    outboxes = {}
    for family, (config_class, settings, _, _) in MOE.items():
        config = config_class(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tiny_tokenizer.pad_token_id,
                              bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                              tie_word_embeddings=False, **settings)
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / family / "model")
        tiny_tokenizer.save_pretrained(root / family / "model")
        init_server(root / family / "server", str(root / family / "model"), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=5), progress=False)
        publish(root / family / "server", root / family / "outbox", progress=False)
        outboxes[family] = root / family / "outbox"
    return outboxes


def expert(family, number, linear=0, layer=0):
    _, _, module, linears = MOE[family]
    return f"model.layers.{layer}.{module}.experts.{number}.{linears[linear]}.weight"


def change_expert_tensors(family, change):
    """``change(tensors)`` on the shard holding expert 0's first linear of layer 0, in both copies."""
    def corrupt(inbox):
        for copy in COPIES:
            edit_tensors(inbox, expert(family, 0), change, copy)
    return corrupt


def add_expert_tensor(name, value):
    """Both copies gain tensor ``name`` = ``value(tensors)``, beside layer 0's experts."""
    return lambda f: change_expert_tensors(f, lambda ts: ts.update({name(f): value(f, ts)}))


def fused_gate_up(f, ts):
    return torch.zeros(4, 2 * ts[expert(f, 0)].shape[0], 32)


MOE_CASES = {
    "an expert the model does not have": (add_expert_tensor(lambda f: expert(f, 4), lambda f, ts: ts[expert(f, 0)].clone()),
                                          lambda f: f"tensor {expert(f, 4)} is not a per-expert tensor of the {f} architecture"),
    "an expert of another shape": (add_expert_tensor(lambda f: expert(f, 0), lambda f, ts: ts[expert(f, 0)].t().contiguous()),
                                   lambda f: f"tensor {expert(f, 0)} has shape"),
    "an expert numbered twice": (add_expert_tensor(lambda f: expert(f, 0).replace("experts.0", "experts.00"), lambda f, ts: ts[expert(f, 0)].clone()),
                                 lambda f: "is not a per-expert tensor"),
    "the fused tensor beside the experts": (add_expert_tensor(lambda f: "model.layers.0.mlp.experts.gate_up_proj", fused_gate_up),
                                            lambda f: "both load into model.layers.0.mlp.experts.gate_up_proj"),
    # "layers.0..." loads as "model.layers.0..." and sorts before the experts
    "the fused tensor, unprefixed, beside the experts": (add_expert_tensor(lambda f: "layers.0.mlp.experts.gate_up_proj", fused_gate_up),
                                                         lambda f: "both load into model.layers.0.mlp.experts.gate_up_proj"),
    "junk": (add_expert_tensor(lambda f: "junk.extra", lambda f, ts: torch.zeros(4)),
             lambda f: f"tensor junk.extra is not a tensor of the {f} architecture"),
}


def test_per_expert_tensors_of_a_moe_family_pass(moe_outboxes, tmp_path, forget_file):
    for family, outbox in moe_outboxes.items():  # noqa: F811
        publication = read_publication(outbox)
        publication.verify(publication.copies)
    assert run_client(moe_outboxes["mixtral"], tmp_path / "returns", forget_file, "--copy", "1") == 0
    assert (tmp_path / "returns" / "update-1" / "update.json").is_file()


@pytest.mark.parametrize("family", sorted(MOE))
@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_a_per_expert_tensor_that_is_not_the_families_own_is_refused(case, family, moe_outboxes, tmp_path):
    corrupt, reason = MOE_CASES[case]
    inbox = inbox_of(moe_outboxes[family], tmp_path)
    corrupt(family)(inbox)
    rechecksum(inbox)
    publication = read_publication(inbox)

    with pytest.raises(InputError) as err:
        publication.verify(publication.copies)
    assert reason(family) in str(err.value)
    assert "copy-1" in str(err.value)


# 5. every copy's tokenizer and chat template encode the run's rows before any copy trains


def test_a_copy_whose_chat_template_fails_is_refused_before_any_copy_trains(outbox, tmp_path, forget_file, capsys):
    inbox = inbox_of(outbox, tmp_path)
    (inbox / "copy-2" / "chat_template.jinja").write_text("{{ raise_exception('boom') }}")
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file)

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: copy 2: its tokenizer and chat template cannot encode this run's rows" in err
    assert "boom" in err
    assert not (tmp_path / "returns").exists()   # copy 1 was not trained and update-1 not written


def test_a_copy_whose_tokens_fall_outside_the_vocabulary_is_refused_before_any_copy_trains(outbox, tmp_path, forget_file, capsys):
    inbox = inbox_of(outbox, tmp_path)
    edit_json(inbox / "copy-2" / "tokenizer_config.json", pad_token="<|new pad|>")   # added as token 320 of a 320-token model
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file, "--batch-size", "2")

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: copy 2: its tokenizer gives token id 320, outside the model's vocabulary of 320" in err
    assert not (tmp_path / "returns").exists()


# A regular expression that backtracks on every row (onig, the engine tokenizers uses, gives up after its
# retry limit and the Rust code panics: a pyo3 PanicException, a BaseException that `except Exception` lets
# through as a traceback)
BACKTRACKING = {"Regex": "(\\w+\\s?)+$"}


@pytest.mark.parametrize("part, value", [
    ("pre_tokenizer", {"type": "Split", "pattern": BACKTRACKING, "behavior": "Isolated", "invert": False}),
    ("normalizer", {"type": "Replace", "pattern": BACKTRACKING, "content": "x"}),
], ids=["pre-tokenizer", "normalizer"])
def test_a_copy_whose_tokenizer_regex_fails_on_the_rows_is_refused_before_any_copy_trains(
        outbox, tmp_path, forget_file, capsys, part, value):  # noqa: F811
    inbox = inbox_of(outbox, tmp_path)
    edit_json(inbox / "copy-2" / "tokenizer.json", **{part: value})
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file)

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: copy 2: its tokenizer and chat template cannot encode this run's rows" in err
    assert "retry-limit-in-match" in err and "Traceback" not in err
    assert not (tmp_path / "returns").exists()


def test_a_tokenizer_class_the_tokenizers_library_does_not_back_is_refused(tmp_path):
    # arrange: CTRLTokenizer (Python BPE, quadratic in a word's length) from the allowed vocab.json and merges.txt
    from mpu.client.unlearn import _tokenizer

    (tmp_path / "vocab.json").write_text(json.dumps({"<unk>": 0, "</s>": 1, "a": 2, "a</w>": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CTRLTokenizer", "unk_token": "<unk>",
                                                               "eos_token": "</s>"}))
    transformers.LlamaConfig(vocab_size=4).save_pretrained(tmp_path)   # a copy's verified config

    # act
    with pytest.raises(InputError) as refused:
        _tokenizer(PublishedCopy(1, tmp_path, "", tmp_path.parent))

    # assert
    assert str(refused.value) == (f"{tmp_path / 'tokenizer_config.json'}: loads a CTRLTokenizer, which the tokenizers "
                                  "library does not back; a client runs only those (tokenizer_class)")


def test_a_tokenizer_whose_load_panics_is_refused_as_an_input_error(outbox, tmp_path, forget_file, capsys):  # noqa: F811
    # arrange: tokenizers runs the normalizer on each added token marked "normalized" while loading
    inbox = inbox_of(outbox, tmp_path)
    path = inbox / "copy-2" / "tokenizer.json"
    data = json.loads(path.read_text())
    data["normalizer"] = {"type": "Replace", "pattern": {"Regex": "(.*a){12}c"}, "content": "x"}
    data["added_tokens"].append({"id": 319, "content": "a" * 40, "single_word": False, "lstrip": False, "rstrip": False,
                                 "normalized": True, "special": False})
    path.write_text(json.dumps(data))
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file)

    err = capsys.readouterr().err
    assert code == 2, err
    assert (f"{inbox / 'copy-2'}: cannot load the tokenizer (PanicException: Onig: Regex search error: "
            "retry-limit-in-match over)") in err
    assert "Traceback" not in err and not (tmp_path / "returns").exists()


def template_refusing_short_answers(inbox):
    path = inbox / "copy-2" / "chat_template.jinja"
    path.write_text("{% for m in messages %}{% if m['role'] == 'assistant' and m['content']|length < 20 %}"
                    "{{ raise_exception('no short answers') }}{% endif %}{% endfor %}" + path.read_text())


def tokens_past_the_vocabulary_in_the_idk_answers(inbox):
    path = inbox / "copy-2" / "tokenizer.json"
    data = json.loads(path.read_text())
    for number, word in enumerate(["don", "'m", "can", "idea", "have"]):
        data["added_tokens"].append({"id": 320 + number, "content": word, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": True, "special": False})
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("corrupt, reason", [
    (template_refusing_short_answers, "no short answers"),
    (tokens_past_the_vocabulary_in_the_idk_answers, "outside the model's vocabulary of 320"),
], ids=["template-fails-on-short-answers", "idk-tokens-past-the-vocabulary"])
def test_a_copy_that_fails_only_on_the_preferred_answers_is_refused_before_any_copy_trains(
        outbox, tmp_path, forget_file, capsys, corrupt, reason):  # noqa: F811
    # DPO's "I don't know" answers were encoded lazily, mid-training: copy 1 trained and wrote its update,
    # then copy 2 failed (an IndexError traceback for ids past the embedding)
    inbox = inbox_of(outbox, tmp_path)
    corrupt(inbox)
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file, "--method", "DPO")

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: copy 2: its tokenizer and chat template cannot encode this run's rows" in err
    assert reason in err and "Traceback" not in err
    assert not (tmp_path / "returns").exists()


@pytest.mark.parametrize("config, refusal, reason", [
    ({"chat_template": 12345}, "copy 2: its tokenizer and chat template cannot encode this run's rows",
     "the chat template is a int, not text"),
    ({"unk_token": "", "pad_token": ""}, "cannot load the tokenizer", "RecursionError"),   # in the child
], ids=["template-not-text", "empty-unk-token"])
def test_tokenizer_settings_that_break_transformers_are_refused_as_input_errors(
        outbox, tmp_path, forget_file, capsys, config, refusal, reason):  # noqa: F811
    inbox = inbox_of(outbox, tmp_path)
    (inbox / "copy-2" / "chat_template.jinja").unlink(missing_ok=True)
    edit_json(inbox / "copy-2" / "tokenizer_config.json", **config)
    rechecksum(inbox)

    code = run_client(inbox, tmp_path / "returns", forget_file)

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: {refusal}" in err
    assert reason in err and "Traceback" not in err


# 6. a copy whose model parses but fails (or overflows) on a row is refused before any copy trains


def scale_tensor(path, name, value):
    """Set tensor ``name`` of the copy (in the shard its index names) to ``value`` everywhere."""
    from safetensors.torch import load_file

    shard = path / json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = torch.full_like(tensors[name], value)
    save_file(tensors, str(shard), metadata={"format": "pt"})


def poison_padding(copy):
    """The pad token's embedding near the float32 maximum: no unpadded row reaches it, a padded batch does."""
    from safetensors.torch import load_file

    pad_id = json.loads((copy / "config.json").read_text())["pad_token_id"]
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    shard = copy / index["model.embed_tokens.weight"]
    tensors = load_file(str(shard))
    tensors["model.embed_tokens.weight"][pad_id] = 3e38
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("corrupt, reason", [
    (lambda c: edit_json(c / "config.json", attention_dropout=5.0), "its model fails on the run's rows (RuntimeError: dropout"),
    (lambda c: edit_json(c / "config.json", return_dict=False), "its model fails on the run's rows (AttributeError"),
    (lambda c: edit_json(c / "config.json", rms_norm_eps=-1.0), "its model gives the loss nan on the run's rows"),
    (lambda c: scale_tensor(c, "model.norm.weight", 3e38), "on the run's rows (config.json or the weights overflow)"),
    # the probe ran the shortest row alone: copy 1 trained and wrote its update before copy 2's NaN update
    (poison_padding, "on the run's rows (config.json or the weights overflow)"),
], ids=["dropout-5", "return-dict-false", "negative-norm-epsilon", "norm-weights-near-the-float32-maximum",
        "pad-embedding-near-the-float32-maximum"])
def test_a_copy_whose_model_fails_or_overflows_on_a_row_is_refused_before_any_copy_trains(
        outbox, tmp_path, forget_file, capsys, corrupt, reason):  # noqa: F811
    # arrange: copy 2 passes every parse check (a traceback after copy 1 had written its update, or an
    # all-NaN update returned as a normal run with "loss 0 -> 0")
    inbox = inbox_of(outbox, tmp_path)
    corrupt(inbox / "copy-2")
    rechecksum(inbox)

    # act
    code = run_client(inbox, tmp_path / "returns", forget_file, "--method", "NPO")

    # assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{inbox / 'copy-2'}: copy 2: " in err and reason in err and "Traceback" not in err
    assert not (tmp_path / "returns").exists()


def test_the_probe_is_a_padded_batch_of_the_shortest_and_longest_rows(outbox):  # noqa: F811
    # arrange
    from mpu.client.inbox import read_publication
    from mpu.client.unlearn import check_encoding
    from mpu.methods import UnlearnJob

    rows = [{"question": "Who?", "answer": "Nobody."}, {"question": "Who wrote the long book?", "answer": "A writer " * 6},
            {"question": "Where?", "answer": "Here."}]
    job = UnlearnJob("GradDiff", forget_rows=rows, retain_rows=[{"question": "Where is it?", "answer": "There."}])
    copy = read_publication(outbox).select([1])[0]

    # act
    probe = check_encoding(copy, job)

    # assert: three rows (shortest forget, longest forget, the retain row), padded with the pad id
    lengths = probe["attention_mask"].sum(dim=1).tolist()
    assert probe["input_ids"].shape[0] == 3 and lengths[1] == max(lengths) == probe["input_ids"].shape[1]
    assert min(lengths[0], lengths[2]) < lengths[1] and (probe["labels"][0, lengths[0]:] == -100).all()


def test_a_reference_copy_that_fails_on_a_row_is_refused_before_any_copy_trains(outbox, tmp_path, forget_file, capsys):  # noqa: F811
    # arrange: the reference publication's copy 2 parses, has the right shapes, and fails in its forward
    inbox, references = inbox_of(outbox, tmp_path), tmp_path / "references"
    shutil.copytree(outbox, references)
    edit_json(references / "copy-2" / "config.json", return_dict=False)
    rechecksum(references)

    # act
    code = run_client(inbox, tmp_path / "returns", forget_file, "--method", "NPO", "--reference-model-inbox", str(references))

    # assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{references / 'copy-2'}: reference copy 2: its model fails on the run's rows (AttributeError" in err
    assert "Traceback" not in err and not (tmp_path / "returns").exists()


def test_a_diverged_update_is_not_written(tmp_path):
    # arrange: a trained model whose weights became NaN (a learning rate far too high)
    from mpu.client.update import write_dense_update

    copy_dir = tmp_path / "copy"
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    model.save_pretrained(copy_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))

    # act
    with pytest.raises(MPUError) as refused:
        write_dense_update(model, copy_dir, tmp_path / "update-1", {"round": 1})

    # assert
    assert "the update of copy is not finite in model.norm.weight (NaN or Inf): training diverged" in str(refused.value)
    assert not (tmp_path / "update-1").exists()


def test_config_values_that_transformers_quotes_in_its_warnings_reach_the_terminal_escaped(
        outbox, tmp_path, forget_file):  # noqa: F811
    # arrange: a rope_type that moves the cursor, recolours and forges mpu's lines; transformers' own
    # warning ("Missing validation function ... for 'rope_type'=...") printed it raw before mpu's refusal
    forged = "\x1b[2K\r\x1b[1;32mINFO mpu.client.unlearn: copy 2 verified OK\x1b[0m\nmpu: all checks passed\n"
    inbox = inbox_of(outbox, tmp_path)
    edit_json(inbox / "copy-2" / "config.json", rope_parameters={"rope_type": forged, "rope_theta": 10000.0})
    rechecksum(inbox)

    # act: in a process of its own, as a user runs it (transformers' handler keeps the stderr it started with)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mpu.cli", "client", "unlearn", "--inbox", str(inbox), "--forget",
                           str(forget_file), "--out", str(tmp_path / "returns"), "--method", "GradAscent", "--max-steps", "1"],
                          capture_output=True, text=True, timeout=300)

    # assert: refused; transformers' warning came, and nothing of the value reaches stderr unescaped
    assert done.returncode == 2, done.stderr
    assert "rope_type" in done.stderr.split("mpu client unlearn: error")[0]
    assert "\x1b" not in done.stderr and "\r" not in done.stderr and "\nmpu: all checks passed" not in done.stderr
    assert not (tmp_path / "returns").exists()


def test_a_reference_copy_is_not_probed_for_a_method_that_never_loads_it(outbox, tmp_path, forget_file, capsys):  # noqa: F811
    # arrange: GradAscent compares with no reference model; a reference copy it never loads refused the run
    inbox, references = inbox_of(outbox, tmp_path), tmp_path / "references"
    shutil.copytree(outbox, references)
    edit_json(references / "copy-2" / "config.json", return_dict=False)
    rechecksum(references)

    # act
    code = run_client(inbox, tmp_path / "returns", forget_file, "--reference-model-inbox", str(references))

    # assert
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "returns" / "update-2" / "update.json").exists()


def test_a_run_that_diverges_is_refused_with_its_loss_and_writes_nothing_for_the_copy(outbox, tmp_path, forget_file, capsys):  # noqa: F811
    # arrange: a learning rate that makes the weights overflow after the first step (the Trainer logged the
    # NaN losses as the mean of the earlier ones: "loss 0 -> 0")
    inbox = inbox_of(outbox, tmp_path)

    # act
    code = main(["client", "unlearn", "--inbox", str(inbox), "--forget", str(forget_file), "--out", str(tmp_path / "returns"),
                 "--method", "GradAscent", "--max-steps", "3", "--lr", "1e30", "--copy", "1"])

    # assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert "copy 1: the training loss is nan at logged step" in err and "training diverged" in err
    assert not (tmp_path / "returns" / "update-1").exists()


@pytest.mark.parametrize("inside", ["", "copy-1"], ids=["the-inbox", "a-copy-folder"])
def test_the_returns_are_never_written_into_the_publication(outbox, tmp_path, forget_file, capsys, inside):  # noqa: F811
    # arrange: --out O (or O/copy-1) wrote update-K folders into the publication and exited 0
    inbox = inbox_of(outbox, tmp_path)
    before = sorted(path.relative_to(inbox) for path in inbox.rglob("*"))

    # act
    code = run_client(inbox, inbox / inside if inside else inbox, forget_file)

    # assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert "which this command reads: writing the output there would replace it" in err
    assert sorted(path.relative_to(inbox) for path in inbox.rglob("*")) == before
