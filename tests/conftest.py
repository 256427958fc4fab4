"""Test setup: 8 virtual CPU devices for mesh tests, no accelerator preallocation."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A persistent compilation cache shared by the test processes and the subprocesses they start (resume,
# SIGKILL and multi-process tests compile the same programs several times). Entries are keyed by the
# program, the jax version and the flags, so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "yijax-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags as absl_flags  # noqa: E402

# the test process is an application, as the yijax command line is: libraries that read absl's global flags
# (tokamax) get their defaults
absl_flags.FLAGS.mark_as_parsed()

jax.config.update("jax_default_matmul_precision", "highest")


# whole modules that run studies, notebooks, several processes, a storage emulator or kill-and-resume
# cycles: marked slow, so `python -m pytest -m "not slow" -n 2` is the quick inner loop (CI runs all)
SLOW_MODULES = ("tests/studies/", "tests/test_notebooks.py", "tests/train/test_multiprocess.py",
                "tests/train/test_gcs.py", "tests/train/test_resume.py", "tests/train/test_integrity.py",
                "tests/unlearning/test_study.py", "tests/test_expert_parallel.py", "tests/eval/test_eval_run_dir.py",
                "tests/train/test_own_text.py")


def pytest_collection_modifyitems(config, items):
  backend = jax.default_backend()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for item in items:
    if os.path.relpath(str(item.fspath), root).startswith(SLOW_MODULES):
      item.add_marker(pytest.mark.slow)
    if "gpu" in item.keywords and backend != "gpu":
      item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
    if "tpu" in item.keywords and backend != "tpu":
      item.add_marker(pytest.mark.skip(reason="needs a TPU"))


@pytest.fixture
def tiny_config():
  from yijax.models.config import ModelConfig

  return ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=96, rope_theta=10000.0, max_seq_len=256)


def make_hf_llama(directory, seed=0, **overrides):
  """A tiny random transformers LlamaForCausalLM saved as safetensors (no download)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  values = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                rope_theta=5e6, tie_word_embeddings=False, rms_norm_eps=1e-5)
  values.update(overrides)
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**values)).eval()
  with torch.no_grad():  # random norms too, so a swapped norm would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  return model


@pytest.fixture
def hf_llama():
  return make_hf_llama


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
  """The embedded corpus with a 4096-piece tokenizer, prepared once per test session."""
  from yijax.data import prepare

  out = tmp_path_factory.mktemp("embedded")
  prepare.prepare_embedded(str(out), 4096, sample_mb=1.0, progress=False)
  return str(out)


def execute_notebook(path, tmp_path, monkeypatch, prepared_data):
  """Runs a colab/ notebook top to bottom headless (nbclient, python3 kernel, one CPU device, small
  settings, the session's prepared data) with tmp_path as its working directory; returns the notebook."""
  import nbclient
  import nbformat

  monkeypatch.setenv("YIJAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("YIJAX_NOTEBOOK_DATA", prepared_data)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")  # a Colab CPU runtime
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  return notebook


def notebook_images(notebook) -> int:
  return sum(1 for c in notebook.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") == "display_data" and "image/png" in o.get("data", {}))
