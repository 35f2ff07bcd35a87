"""Label Studio pre-annotations (``labelstudio.json``) and the labelling config that
matches them (``labelstudio_config.xml``).

Each image is a task ``{"data": {"image": URL}, "predictions": [...]}`` with one prediction
whose ``result`` holds a ``rectanglelabels`` region per box (``from_name`` "label",
``to_name`` "image", position and size in percent of the image, ``original_width`` /
``original_height`` in pixels, the class probability as ``score``). The URL is
``ExportOptions.image_url`` followed by the image's path relative to the images' common
folder: by default Label Studio's local-files URL (``/data/local-files/?d=``), served when
Label Studio runs with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to that folder.

>>> from camloc.exports.registry import ExportOptions, export_set
>>> data = export_set([{"image": "/d/x.png", "width": 10, "height": 8, "error": None,
...     "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}])
>>> import json; tasks = json.loads(dict(write_labelstudio(data, ExportOptions()))["labelstudio.json"])
>>> tasks[0]["data"]["image"], tasks[0]["predictions"][0]["result"][0]["value"]
('/data/local-files/?d=x.png', {'x': 10.0, 'y': 25.0, 'width': 40.0, 'height': 50.0, 'rotation': 0, \
'rectanglelabels': ['cock']})
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from .registry import ExportFiles, ExportFormat, ExportOptions, ExportSet, register_export

TASKS_FILE = "labelstudio.json"
CONFIG_FILE = "labelstudio_config.xml"
FROM_NAME, TO_NAME = "label", "image"


def _percent(value: float, total: int) -> float:
    return round(100.0 * value / total, 6)


def tasks(data: ExportSet, image_url: str) -> list[dict[str, Any]]:
    """The Label Studio tasks of an export set, one per image."""
    found = []
    for number, image in enumerate(data.images, start=1):
        result = []
        for region, detection in enumerate(image.detections, start=1):
            xmin, ymin, xmax, ymax = detection.box
            result.append({
                "id": f"camloc-{number}-{region}",
                "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
                "original_width": image.width, "original_height": image.height, "image_rotation": 0,
                "value": {"x": _percent(xmin, image.width), "y": _percent(ymin, image.height),
                          "width": _percent(xmax - xmin, image.width),
                          "height": _percent(ymax - ymin, image.height), "rotation": 0,
                          "rectanglelabels": [detection.label]},
                "score": round(detection.score, 6),
            })
        score = max((d.score for d in image.detections), default=0.0)
        found.append({
            "data": {"image": image_url + quote(image.relative, safe="/")},
            "predictions": [{"model_version": data.model_version, "score": round(score, 6), "result": result}],
        })
    return found


def labelling_config(data: ExportSet) -> str:
    """The labelling interface of the tasks: an image and a rectangle label per class found."""
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for _, name in data.classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </RectangleLabels>\n</View>\n')


def write_labelstudio(data: ExportSet, options: ExportOptions, folder: str = ".") -> ExportFiles:
    yield TASKS_FILE, (json.dumps(tasks(data, options.image_url), indent=1) + "\n").encode()
    yield CONFIG_FILE, labelling_config(data).encode()


register_export(ExportFormat("labelstudio", write_labelstudio, TASKS_FILE,
                             "Label Studio tasks with predictions, and the labelling config"))
