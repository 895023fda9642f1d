"""experiments/configs/variants.py: the one parser of every config's `get_config(arg)`."""
import ml_collections
import pytest

from experiments.configs import variants
from experiments.configs.progan import fashion_mnist_32
from experiments.configs.pspnet import camvid_pspnet50, common


def test_split_keeps_bracketed_commas():
  assert variants.split_arg("runlocal, model.bins=(1,2,4),x=[1, 2],ms") == \
      ["runlocal", "model.bins=(1,2,4)", "x=[1, 2]", "ms"]
  assert variants.split_arg("") == []


def test_values_are_literals_else_strings():
  assert variants.parse_value("3") == 3 and variants.parse_value("0.5") == 0.5
  assert variants.parse_value("(1, 2)") == (1, 2) and variants.parse_value("True") is True
  assert variants.parse_value("bfloat16") == "bfloat16"


def test_variants_and_overrides_apply_left_to_right():
  c = camvid_pspnet50.get_config("runlocal,batch_size=4,ms,model.bins=(1,2,4)")
  runlocal_steps = camvid_pspnet50.get_config("runlocal").max_steps
  assert runlocal_steps != camvid_pspnet50.get_config().max_steps
  assert c.batch_size == 4 and c.max_steps == runlocal_steps  # runlocal, then the override.
  assert c.eval.scales == common.MULTI_SCALES and c.model.bins == (1, 2, 4)
  # An override before the variant is overwritten by it.
  assert camvid_pspnet50.get_config("batch_size=4,runlocal").batch_size == 8
  c = fashion_mnist_32.get_config("test,model.dtype=bfloat16")
  assert c.model.dtype == "bfloat16" and c.model.resolution == 16


def test_unknown_variant_and_key_are_named():
  with pytest.raises(ValueError, match="unknown config variant 'fast'.*runlocal, test"):
    fashion_mnist_32.get_config("fast")
  with pytest.raises(KeyError, match="model.no_such"):
    fashion_mnist_32.get_config("model.no_such=1")
  c = ml_collections.ConfigDict({"a": 1})
  with pytest.raises(TypeError):
    variants.apply(c, "a=hello", {})  # ConfigDict keeps the type of an int field.
