"""ImageNet VID 2015 + DET builder on tiny generated trees in the ILSVRC2015 layout."""
import pathlib

import cv2
import numpy as np
import PIL.Image
import pytest

from readingnotes_jax.data import tfds_local, vid
from readingnotes_jax.errors import UserError

_RNG = np.random.default_rng(0)
W, H = 40, 30
AIRPLANE, ZEBRA, NOT_VID = "n02691156", "n02391049", "n00007846"


def _xml(objects, vid_style=True):
  """Annotation text in the ILSVRC layout; returns (text, line of each object's <bndbox>)."""
  lines = ["<annotation>", "\t<folder>f</folder>", "\t<filename>x</filename>",
           "\t<source>", "\t\t<database>ILSVRC_2015</database>", "\t</source>",
           "\t<size>", f"\t\t<width>{W}</width>", f"\t\t<height>{H}</height>", "\t</size>"]
  box_lines = []
  for wnid, (x1, y1, x2, y2), track_id, occluded in objects:
    lines.append("\t<object>")
    if vid_style:
      lines.append(f"\t\t<trackid>{track_id}</trackid>")
    lines.append(f"\t\t<name>{wnid}</name>")
    lines.append("\t\t<bndbox>")
    box_lines.append(len(lines))
    lines += [f"\t\t\t<xmax>{x2}</xmax>", f"\t\t\t<xmin>{x1}</xmin>",
              f"\t\t\t<ymax>{y2}</ymax>", f"\t\t\t<ymin>{y1}</ymin>", "\t\t</bndbox>"]
    if vid_style:
      lines += [f"\t\t<occluded>{occluded}</occluded>", "\t\t<generated>0</generated>"]
    lines.append("\t</object>")
  lines.append("</annotation>")
  return "\n".join(lines) + "\n", box_lines


def _write(root, kind, split, name, objects, grey=False):
  """An image and its annotation; returns (RGB pixels, annotation path, <bndbox> lines)."""
  image_path = root / "Data" / kind / split / f"{name}.JPEG"
  image_path.parent.mkdir(parents=True, exist_ok=True)
  pixels = _RNG.integers(0, 256, (H, W) if grey else (H, W, 3), dtype=np.uint8)
  image_path.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
  rgb = np.asarray(PIL.Image.open(image_path).convert("RGB"))
  xml_path = root / "Annotations" / kind / split / f"{name}.xml"
  xml_path.parent.mkdir(parents=True, exist_ok=True)
  text, box_lines = _xml(objects, vid_style=kind == "VID")
  xml_path.write_text(text)
  return rgb, xml_path, box_lines


def _tree(root: pathlib.Path) -> dict:
  """Two train videos (3 and 2 frames), two val videos, four DET images."""
  written = {}
  videos = {"ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000": 3,
            "ILSVRC2015_VID_train_0001/ILSVRC2015_train_00001000": 2}
  for video, count in videos.items():
    for f in range(count):
      objects = [(AIRPLANE, (2 + f, 3, 20 + f, 25), 0, f % 2), (ZEBRA, (10, 0, W, 12), 1, 0)]
      written[f"train/{video}/{f:06d}"] = (_write(root, "VID", "train", f"{video}/{f:06d}",
                                                  objects), objects)
  lists = root / "ImageSets" / "VID"
  lists.mkdir(parents=True)
  first, second = videos
  (lists / "train_1.txt").write_text(f"{first} 1\n")
  (lists / "train_26.txt").write_text(f"{second} 1\n{first} -1\n")
  val_frames = ["ILSVRC2015_val_00000000/000000", "ILSVRC2015_val_00000000/000001",
                "ILSVRC2015_val_00000001/000000"]
  for frame in val_frames:
    objects = [(ZEBRA, (0, 0, 9, 9), 0, 0)]
    written[f"val/{frame}"] = (_write(root, "VID", "val", frame, objects), objects)
  (lists / "val.txt").write_text("".join(f"{f} {i + 1}\n" for i, f in enumerate(val_frames)))
  det = {"ILSVRC2014_train_0000/ILSVRC2014_train_00000001":
             [(NOT_VID, (0, 0, 5, 5), -1, 0), (ZEBRA, (1, 2, 30, 20), -1, 0)],
         "ILSVRC2014_train_0000/ILSVRC2014_train_00000002": [(NOT_VID, (0, 0, 5, 5), -1, 0)],
         "ILSVRC2013_train/n02691156/n02691156_1": [(AIRPLANE, (3, 3, 8, 9), -1, 0)]}
  for name, objects in det.items():
    written[f"det/{name}"] = (_write(root, "DET", "train", name, objects,
                                     grey=name.endswith("_1")), objects)
  (root / "ImageSets" / "DET").mkdir()
  (root / "ImageSets" / "DET" / "train.txt").write_text(
      "ILSVRC2013_train/n02691156/n02691156_1 1\n"
      "ILSVRC2014_train_0000/ILSVRC2014_train_00000001 2\n"
      "ILSVRC2014_train_0000/ILSVRC2014_train_00000002 3\n"
      "ILSVRC2014_train_0000/ILSVRC2014_train_00000003 4\n")  # no files: skipped
  return written


def _records(root, cache, split):
  source = tfds_local.load(vid.ImageNetVID(source_dir=root, data_dir=cache), split)
  return [source[i] for i in range(len(source))]


def test_train_and_val_frames(tmp_path):
  written = _tree(tmp_path / "ILSVRC2015")
  records = _records(tmp_path / "ILSVRC2015", tmp_path / "cache", "train")
  names = [r["file_name"].decode() for r in records]
  assert names == [f"Data/VID/train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000/"
                   f"{f:06d}.JPEG" for f in range(3)] + [
                       f"Data/VID/train/ILSVRC2015_VID_train_0001/ILSVRC2015_train_00001000/"
                       f"{f:06d}.JPEG" for f in range(2)]
  assert [int(r["frame_index"]) for r in records] == [0, 1, 2, 0, 1]
  assert [int(r["num_frames"]) for r in records] == [3, 3, 3, 2, 2]
  assert records[3]["video"].decode() == "ILSVRC2015_VID_train_0001/ILSVRC2015_train_00001000"
  for record, name in zip(records, names):
    key = "train/" + name.removeprefix("Data/VID/train/").removesuffix(".JPEG")
    (rgb, _, _), objects = written[key]
    np.testing.assert_array_equal(record["image"], rgb)
    # The zebra's xmax = W is one pixel past the border: clipped to W - 1.
    expected = [list(objects[0][1]), [10, 0, W - 1, 12]]
    np.testing.assert_array_equal(record["boxes"], np.float32(expected))
    np.testing.assert_array_equal(record["labels"], [0, 29])
    np.testing.assert_array_equal(record["track_ids"], [0, 1])
    np.testing.assert_array_equal(record["occluded"], [objects[0][3] == 1, False])
    np.testing.assert_array_equal(record["generated"], [False, False])
  val = _records(tmp_path / "ILSVRC2015", tmp_path / "cache", "val")
  assert [(int(r["frame_index"]), int(r["num_frames"])) for r in val] == [(0, 2), (1, 2), (0, 1)]
  np.testing.assert_array_equal(val[2]["boxes"], np.float32([[0, 0, 9, 9]]))


def test_det_images_of_vid_classes(tmp_path):
  written = _tree(tmp_path / "ILSVRC2015")
  records = _records(tmp_path / "ILSVRC2015", tmp_path / "cache", "det_train")
  assert [r["file_name"].decode() for r in records] == [
      "Data/DET/train/ILSVRC2013_train/n02691156/n02691156_1.JPEG",
      "Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001.JPEG"]
  airplane, zebra = records
  # A grey JPEG comes back as RGB.
  np.testing.assert_array_equal(airplane["image"],
                                written["det/ILSVRC2013_train/n02691156/n02691156_1"][0][0])
  np.testing.assert_array_equal(airplane["labels"], [0])
  # The non-VID object is dropped, the zebra kept.
  np.testing.assert_array_equal(zebra["boxes"], np.float32([[1, 2, 30, 20]]))
  np.testing.assert_array_equal(zebra["labels"], [29])
  np.testing.assert_array_equal(zebra["track_ids"], [-1])
  assert (int(zebra["frame_index"]), int(zebra["num_frames"])) == (0, 1)


def _assert_fails_at(root, cache, path, line, fragment):
  with pytest.raises(UserError) as error:
    tfds_local.prepare(vid.ImageNetVID(source_dir=root, data_dir=cache))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{path}:{line}: "), message
  assert fragment in message


@pytest.mark.parametrize("box, fragment", [
    ((12, 3, 11, 25), "non-positive size"),
    ((2, 30, 20, 29), "non-positive size"),
    ((W, 3, W + 8, 25), f"outside the {W}x{H} image"),
    ((-9, 3, -1, 25), f"outside the {W}x{H} image"),
])
def test_bad_boxes_name_file_and_line(tmp_path, box, fragment):
  root = tmp_path / "ILSVRC2015"
  _tree(root)
  frame = "ILSVRC2015_val_00000000/000001"
  _, xml_path, box_lines = _write(root, "VID", "val", frame,
                                  [(ZEBRA, (0, 0, 9, 9), 0, 0), (ZEBRA, box, 1, 0)])
  _assert_fails_at(root, tmp_path / "cache", xml_path, box_lines[1], fragment)


def test_unknown_class_and_malformed_xml(tmp_path):
  root = tmp_path / "ILSVRC2015"
  _tree(root)
  frame = "ILSVRC2015_val_00000001/000000"
  _, xml_path, box_lines = _write(root, "VID", "val", frame, [(NOT_VID, (0, 0, 9, 9), 0, 0)])
  _assert_fails_at(root, tmp_path / "cache", xml_path, box_lines[0] - 1, "not one of the 30")
  xml_path.write_text("<annotation>\n<object>\n<name>n02391049</nam>\n</object>\n</annotation>\n")
  _assert_fails_at(root, tmp_path / "cache2", xml_path, 3, "malformed XML")


def test_missing_lists_and_frames(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="none of ImageSets/VID/train_"):
    tfds_local.prepare(vid.ImageNetVID(source_dir=tmp_path / "empty", data_dir=tmp_path / "c"))
  root = tmp_path / "ILSVRC2015"
  _tree(root)
  (root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000001" / "000000.JPEG").unlink()
  with pytest.raises(UserError, match="000000.JPEG: cannot read"):
    tfds_local.prepare(vid.ImageNetVID(source_dir=root, data_dir=tmp_path / "cache"))


def test_class_tables():
  assert len(vid.CLASS_NAMES) == len(set(vid.CLASS_WNIDS)) == 30
  assert vid.LABEL_OF_WNID["n02691156"] == vid.CLASS_NAMES.index("airplane")
  assert vid.LABEL_OF_WNID["n02391049"] == vid.CLASS_NAMES.index("zebra")
