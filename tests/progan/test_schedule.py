"""The progressive schedule against known points of the official TrainingSchedule."""
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.progan.schedule import Schedule, parse_resolution_dict


def official_lod(kimg, final_log2, start_log2, train_kimg, trans_kimg):
  """train.py TrainingSchedule of tkarras/progressive_growing_of_gans, transcribed."""
  phase_dur = train_kimg + trans_kimg
  phase_idx = int(kimg // phase_dur)
  phase_kimg = kimg - phase_idx * phase_dur
  lod = final_log2 - start_log2 - phase_idx
  lod -= max(phase_kimg - train_kimg, 0.0) / trans_kimg
  return max(lod, 0.0)


SCHED = Schedule(final_resolution=32, training_kimg=600, transition_kimg=600, total_kimg=6000,
                 minibatch_base=16, minibatch="4:128,8:128,16:128,32:64", g_lr="32:0.002")


@pytest.mark.parametrize("images, level, fading, alpha, phase, batch", [
    (0, 2, False, 1.0, 0, 128),
    (599_999, 2, False, 1.0, 0, 128),
    (600_000, 2, False, 1.0, 0, 128),       # lod is still integer here, as officially.
    (600_001, 3, True, 0.0, 1, 128),        # fade into 8x8 starts.
    (900_000, 3, True, 0.5, 1, 128),
    (1_200_000, 3, False, 1.0, 2, 128),
    (1_800_000 + 300_000, 4, True, 0.5, 3, 128),
    (3_000_000 + 150_000, 5, True, 0.25, 5, 64),
    (3_600_000, 5, False, 1.0, 6, 64),
    (5_999_999, 5, False, 1.0, 6, 64),
])
def test_stage_at_known_points(images, level, fading, alpha, phase, batch):
  stage = SCHED.stage(images)
  assert (stage.level, stage.fading, stage.phase, stage.batch_size) == (level, fading, phase, batch)
  # abs: the table's 0.0 is one image (1 / 600,000 = 1.7e-6) into the fade; exact below.
  assert stage.alpha == pytest.approx(alpha, abs=1e-5)
  lod = official_lod(images / 1000, 5, 2, 600, 600)
  assert stage.level == 5 - int(lod // 1)
  assert stage.alpha == pytest.approx(1 - (lod - lod // 1))
  assert stage.g_lr == (0.002 if level == 5 else 0.001) and stage.d_lr == 0.001


def test_phases_in_order():
  phases = [SCHED.stage(i).phase for i in range(0, 6_000_000, 1000)]
  assert phases == sorted(phases) and set(phases) == set(range(SCHED.num_phases))


def test_batch_rounded_to_device_multiple():
  s = Schedule(final_resolution=8, minibatch_base=20, batch_multiple=8)
  assert s.stage(0).batch_size == 16


@pytest.mark.parametrize("kwargs", [dict(final_resolution=48), dict(final_resolution=2),
                                    dict(final_resolution=32, start_resolution=64),
                                    dict(final_resolution=32, minibatch="4=12")])
def test_bad_settings_raise_user_error(kwargs):
  with pytest.raises(UserError):
    Schedule(**kwargs).stage(0)


def test_parse_resolution_dict():
  assert parse_resolution_dict("4:128, 1024:0.0015") == {4: 128.0, 1024: 0.0015}


def test_celeba_hq_1024_follows_the_v2_single_gpu_preset():
  """config.py `preset-v2-1gpu`: minibatch_base 4 with {4: 128, ..., 512: 4}, so 4 at 1024 px;
  learning rate 0.0015 at 1024 px, 0.001 below."""
  from experiments.configs.progan import celeba_hq_1024
  from readingnotes_jax.progan import train
  schedule = train.build_schedule(celeba_hq_1024.get_config(), 1)
  preset = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}
  for level in range(2, 11):
    stage = schedule.stage((level - 2) * 1_200_000 + 1)  # stable at 2**level px.
    assert (stage.level, stage.fading) == (level, False)
    assert stage.batch_size == preset.get(2**level, 4)
    assert stage.g_lr == stage.d_lr == (0.0015 if level == 10 else 0.001)
  assert schedule.total_images == 12_000_000
