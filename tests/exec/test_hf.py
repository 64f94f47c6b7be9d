"""A real Hugging Face checkpoint: a tiny random ``LlamaForCausalLM`` saved as safetensors
in the test, loaded by the executor's loader, compared with its own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinfer.exec.model import packed_input
from twinfer.exec.reference import reference_model
from twinfer.exec.weights import CheckpointWeights
from twinfer.spec import SpecError, model_from_hf_config, model_preset

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_kernels")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, the HF model): GQA, head_dim 16, a non-default rope_theta."""
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF initializes norms to exactly 1: make them matter
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf_llama")
    hf.save_pretrained(path, safe_serialization=True)
    return path, hf


def test_loader_matches_hf_forward(checkpoint):
    path, hf = checkpoint
    spec = model_from_hf_config(path)
    assert (spec.dtype, spec.rope_theta, spec.kv_heads) == ("fp32", 5000.0, 2)
    source = CheckpointWeights(path, spec, torch.device("cpu"), torch.float32)
    model = reference_model(spec, source)
    ids = torch.randint(0, spec.vocab, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits[0].float().numpy()  # [23, vocab]
        got = model(ids[0], packed_input([23])).numpy()
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert rel <= 1e-5, f"relative error {rel:.2e}"


def test_checkpoint_that_does_not_match_the_spec_names_tensor_and_shapes(checkpoint):
    path, _ = checkpoint
    wrong = model_from_hf_config(path).model_copy(update={"ffn_hidden": 128})
    with pytest.raises(SpecError) as err:
        CheckpointWeights(path, wrong, torch.device("cpu"), torch.float32)
    assert str(err.value).startswith("checkpoint: tensor model.layers.0.mlp.gate_proj.weight "
                                     "has shape [96, 64] but the model spec needs [128, 64]")


def test_missing_checkpoint_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no \\*.safetensors file"):
        CheckpointWeights(tmp_path, model_preset("tiny"), torch.device("cpu"), torch.float32)


@pytest.mark.mpi
@pytest.mark.slow
def test_tp2_executor_on_the_checkpoint_matches_the_reference(checkpoint, exec_run,
                                                               check_reference):
    path, _ = checkpoint
    scenario = {
        "model": {"hf_config": str(path)},
        "cluster": {"nodes": [{"name": "n0", "gpu": "cpu", "count": 2}]},
        "layout": {"kind": "uniform", "tp": 2},
        "workload": {"requests": 2, "prompt_tokens": {"dist": "uniform", "min": 4, "max": 9},
                     "output_tokens": 4},
        "scheduler": {"kv_block_tokens": 4},
    }
    run = exec_run(scenario)
    proc = run.run("--checkpoint", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = model_from_hf_config(path)
    check_reference(scenario, run.logits(),
                    CheckpointWeights(path, spec, torch.device("cpu"), torch.float32))
