"""MOTChallenge sequences (frames or a video, gt.txt) on tiny generated trees and real data."""
import pathlib

import cv2
import numpy as np
import pytest

from readingnotes_jax.data import mot, tfds_local
from readingnotes_jax.errors import UserError

_RNG = np.random.default_rng(0)
W, H = 64, 48


def _write_gt(folder: pathlib.Path, lines: list[str]) -> pathlib.Path:
  (folder / "gt").mkdir(parents=True, exist_ok=True)
  path = folder / "gt" / "gt.txt"
  path.write_text("\n".join(lines) + "\n")
  return path


def _frames_sequence(folder: pathlib.Path, num_frames: int = 3) -> list[np.ndarray]:
  """img1/ JPEG frames, seqinfo.ini, MOT15-style gt (10 fields); returns the BGR frames."""
  (folder / "img1").mkdir(parents=True)
  frames = []
  for i in range(num_frames):
    frame = _RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "img1" / f"{i + 1:06d}.jpg"), frame)
    frames.append(frame)
  (folder / "seqinfo.ini").write_text(
      f"[Sequence]\nname={folder.name}\nimDir=img1\nframeRate=7\nseqLength={num_frames}\n"
      f"imWidth={W}\nimHeight={H}\nimExt=.jpg\n")
  _write_gt(folder, [
      "1,3,11,6,20.5,30,1,-1,-1,-1",
      "1,4,-4,2,10,10,1,-1,-1,-1",     # partly left of the image: clipped in the builder
      "2,3,12,7,20.5,30,1,-1,-1,-1",
      "3,4,60,40,10,10,0,-1,-1,-1",    # conf 0: ignored
  ])
  return frames


def _video_sequence(folder: pathlib.Path, num_frames: int = 6) -> list[np.ndarray]:
  """One MJPG .avi (no img1/, no seqinfo.ini), MOT16-style gt (9 fields, classes)."""
  folder.mkdir(parents=True)
  writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
  for i in range(num_frames):
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, :, 1] = 20 * i
    cv2.rectangle(frame, (4 + 5 * i, 10), (20 + 5 * i, 30), (255, 255, 255), -1)
    writer.write(frame)
  writer.release()
  _write_gt(folder, [
      "2,1,5,11,17,21,1,1,0.9",
      "2,2,30,5,10,10,1,7,1.0",        # class 7 (static person): not a pedestrian
      f"{num_frames},1,30,11,17,21,1,1,1.0",
  ])
  # What the test's own decoder reads, frame by frame.
  capture = cv2.VideoCapture(str(folder / "clip.avi"))
  decoded = []
  while (read := capture.read())[0]:
    decoded.append(read[1])
  capture.release()
  assert len(decoded) == num_frames
  return decoded


def test_frames_sequence_info_frames_and_ground_truth(tmp_path):
  _frames_sequence(tmp_path / "SEQ-01")
  sequence = mot.open_sequence(tmp_path / "SEQ-01", require_ground_truth=True)
  assert sequence.info == mot.SequenceInfo("SEQ-01", 3, W, H, 7.0)
  for i in (2, 0):
    expected = cv2.imread(str(tmp_path / "SEQ-01" / "img1" / f"{i + 1:06d}.jpg"))
    np.testing.assert_array_equal(sequence.frame(i), expected[:, :, ::-1])
  assert len(list(sequence)) == 3
  gt = sequence.ground_truth
  np.testing.assert_array_equal(gt.frames, [0, 0, 1])
  np.testing.assert_array_equal(gt.ids, [3, 4, 3])
  # 1-based left/top -> 0-based corners: x1 = left - 1, x2 = x1 + width.
  np.testing.assert_array_equal(gt.boxes, [[10, 5, 30.5, 35], [-5, 1, 5, 11], [11, 6, 31.5, 36]])


def test_video_sequence_lazy_random_access_and_classes(tmp_path):
  decoded = _video_sequence(tmp_path / "cam")
  sequence = mot.open_sequence(tmp_path / "cam")
  assert (sequence.info.num_frames, sequence.info.width, sequence.info.height) == (6, W, H)
  assert sequence.info.frame_rate == pytest.approx(10)
  for i in (3, 4, 1, 5, 0):  # forward, sequential, backward: seeks
    np.testing.assert_array_equal(sequence.frame_bgr(i), decoded[i])
  np.testing.assert_array_equal(sequence.frame(2), decoded[2][:, :, ::-1])
  with pytest.raises(IndexError):
    sequence.frame(6)
  gt = sequence.ground_truth
  np.testing.assert_array_equal(gt.frames, [1, 5])
  np.testing.assert_array_equal(gt.ids, [1, 1])
  sequence.close()


def test_builder_over_a_folder_of_sequences(tmp_path):
  _frames_sequence(tmp_path / "root" / "A-frames")
  decoded = _video_sequence(tmp_path / "root" / "B-video")
  (tmp_path / "root" / "notes").mkdir()  # not a sequence: ignored
  builder = mot.MOTChallenge(source_dir=tmp_path / "root", data_dir=tmp_path / "cache")
  source = tfds_local.load(builder, "train")
  assert len(source) == 3 + 6
  records = [source[i] for i in range(len(source))]
  assert [r["video"].decode() for r in records] == ["A-frames"] * 3 + ["B-video"] * 6
  assert [int(r["frame_index"]) for r in records] == [0, 1, 2, 0, 1, 2, 3, 4, 5]
  assert {int(r["num_frames"]) for r in records[3:]} == {6}
  first = records[0]
  jpg = (tmp_path / "root" / "A-frames" / "img1" / "000001.jpg").read_bytes()
  np.testing.assert_array_equal(
      first["image"], cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
  np.testing.assert_array_equal(first["boxes"], np.float32([[10, 5, 30.5, 35], [0, 1, 5, 11]]))
  np.testing.assert_array_equal(first["track_ids"], [3, 4])
  np.testing.assert_array_equal(first["labels"], [0, 0])
  assert records[2]["boxes"].shape == (0, 4)  # frame 3's only box has conf 0
  assert first["file_name"].decode() == "A-frames/img1/000001.jpg"
  # Video frames: stored as JPEG quality 95 of the decoded frame.
  video_frame = records[3 + 1]
  _, encoded = cv2.imencode(".jpg", decoded[1], [cv2.IMWRITE_JPEG_QUALITY, 95])
  np.testing.assert_array_equal(video_frame["image"],
                                cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])
  np.testing.assert_array_equal(video_frame["boxes"], np.float32([[4, 10, 21, 31]]))
  assert video_frame["file_name"].decode() == "B-video/clip.avi#000002"


@pytest.mark.parametrize("line, fragment", [
    ("2,5,10,10,0,20,1,-1,-1,-1", "positive size"),
    ("2,5,10,10,20,-3,1,-1,-1,-1", "positive size"),
    ("2,5,65,10,20,20,1,-1,-1,-1", "outside the 64x48 image"),
    ("2,5,-30,10,20,20,1,-1,-1,-1", "outside the 64x48 image"),
    ("4,5,10,10,20,20,1,-1,-1,-1", "frame 4 outside the sequence's frames 1..3"),
    ("2,5,10,ten,20,20,1,-1,-1,-1", "not comma-separated numbers"),
    ("2,5,10,10,20", "5 fields"),
    ("1,3,10,10,20,20,1,-1,-1,-1", "id 3 already has a box in frame 1 (line 1)"),
])
def test_bad_ground_truth_names_file_and_line(tmp_path, line, fragment):
  _frames_sequence(tmp_path / "S")
  gt_path = tmp_path / "S" / "gt" / "gt.txt"
  gt_path.write_text(gt_path.read_text() + line + "\n")
  with pytest.raises(UserError) as error:
    mot.open_sequence(tmp_path / "S", require_ground_truth=True)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{gt_path}:5: ") and fragment in message


def test_missing_ground_truth_and_frames(tmp_path):
  _frames_sequence(tmp_path / "S")
  (tmp_path / "S" / "gt" / "gt.txt").unlink()
  sequence = mot.open_sequence(tmp_path / "S")  # fine without evaluation
  with pytest.raises(UserError, match="has no gt/gt.txt: evaluation needs the ground truth"):
    _ = sequence.ground_truth
  with pytest.raises(UserError, match="has no gt/gt.txt"):
    mot.open_sequence(tmp_path / "S", require_ground_truth=True)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="has no frames"):
    mot.open_sequence(tmp_path / "empty")
  with pytest.raises(UserError, match="no MOTChallenge sequence"):
    tfds_local.prepare(mot.MOTChallenge(source_dir=tmp_path / "empty", data_dir=tmp_path / "c"))


def test_seqinfo_disagreeing_with_frames(tmp_path):
  _frames_sequence(tmp_path / "S")
  info = tmp_path / "S" / "seqinfo.ini"
  info.write_text(info.read_text().replace("seqLength=3", "seqLength=4"))
  with pytest.raises(UserError, match="seqLength=4 but .* has 3 frames"):
    mot.open_sequence(tmp_path / "S")
  info.write_text(info.read_text().replace("seqLength=4", "seqLength=3").replace(
      "imWidth=64", "imWidth=640"))
  with pytest.raises(UserError, match="imWidth, imHeight = 640, 48 but the frames are 64 x 48"):
    mot.open_sequence(tmp_path / "S")


def _parse_gt(path):
  """gt.txt read independently: conf != 0 rows as (frame-1, id, x1, y1, x2, y2)."""
  rows = np.loadtxt(path, delimiter=",")
  rows = rows[rows[:, 6] != 0]
  return rows[:, 0] - 1, rows[:, 1], np.stack(
      [rows[:, 2] - 1, rows[:, 3] - 1, rows[:, 2] - 1 + rows[:, 4], rows[:, 3] - 1 + rows[:, 5]],
      axis=1)


@pytest.mark.parametrize("name, num_frames, size, fps", [
    ("PETS09-S2L1", 795, (768, 576), 7.0), ("TUD-Stadtmitte", 179, (640, 480), 25.0)])
def test_real_sequences(data_dir, name, num_frames, size, fps):
  folder = data_dir / "mot15" / name
  sequence = mot.open_sequence(folder, require_ground_truth=True)
  assert sequence.info == mot.SequenceInfo(name, num_frames, *size, fps)
  frames, ids, boxes = _parse_gt(folder / "gt" / "gt.txt")
  gt = sequence.ground_truth
  np.testing.assert_array_equal(gt.frames, frames)
  np.testing.assert_array_equal(gt.ids, ids)
  np.testing.assert_allclose(gt.boxes, boxes, rtol=0, atol=1e-9)
  assert len(gt.frames) == {"PETS09-S2L1": 4476, "TUD-Stadtmitte": 1156}[name]
  # A few frames: sequential decoding here against the sequence's random access.
  capture = cv2.VideoCapture(str(sequence.video))
  expected = [capture.read()[1] for _ in range(3)]
  capture.release()
  for i in (2, 0, 1):
    frame = sequence.frame(i)
    assert frame.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(frame, expected[i][:, :, ::-1])
  sequence.close()
