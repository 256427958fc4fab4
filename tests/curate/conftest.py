import pytest

from yijax import configlib

CONFIG = "configs/data/yi.py"


@pytest.fixture
def config():
  """configs/data/yi.py with in-process tasks (tests override what they need)."""
  def make(**overrides):
    return configlib.load_config(CONFIG, {"executor.workers": 1, **overrides})
  return make
