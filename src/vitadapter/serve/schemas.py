"""The JSON bodies of the API, as they appear in the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, Field

RGB = tuple[int, int, int]


class ErrorBody(BaseModel):
    """Every refusal and failure: a 4xx or 5xx status with this body."""

    error: str = Field(description="what was wrong and, where it helps, what to do")


class ClassInfo(BaseModel):
    id: int = Field(description="class id (the value in the label PNG)")
    name: str
    color: RGB = Field(description="palette colour, as in the colour and overlay PNGs")


class ClassShare(ClassInfo):
    pixels: int = Field(description="pixels labelled with this class")
    share: float = Field(description="fraction of the image (sums to 1 over the classes)")
    score: float | None = Field(description="mean posterior of the class over its pixels, "
                                            "in [0, 1] (null if the model's scores were not "
                                            "finite)")


class Timing(BaseModel):
    queued_seconds: float = Field(description="waiting for the inference thread")
    inference_seconds: float = Field(description="decoding, segmentation and rendering")
    total_seconds: float = Field(description="from the request's arrival to the response")


class SegmentBody(BaseModel):
    """The segmentation of one image (``format=json``)."""

    model: str = Field(description="preset or config name")
    width: int
    height: int
    tta: bool = Field(description="whether test-time augmentation was used")
    classes: list[ClassShare] = Field(description="classes present, by decreasing share")
    timing: Timing
    overlay: str | None = Field(None, description="with include_overlay=true: the overlay PNG "
                                                  "as a data:image/png;base64 URL")


class HealthBody(BaseModel):
    status: str = Field(description="'ok', 'loading' or 'failed'")
    error: str | None = Field(None, description="why loading the model failed")
    in_progress: int = Field(description="requests admitted now: uploading, waiting or "
                                         "running (at most max_queue)")


class LimitsBody(BaseModel):
    max_queue: int = Field(description="requests admitted at once (uploading, waiting or "
                                       "running); beyond, 503 with Retry-After")
    max_pixels: int = Field(description="largest image, in pixels (413 beyond)")
    max_upload_bytes: int = Field(description="largest request body (413 beyond)")
    timeout_seconds: float = Field(description="per request: upload, wait and run (504 "
                                               "beyond)")
    upload_timeout_seconds: float = Field(description="for the upload alone (408 beyond)")


class ModelBody(BaseModel):
    """The model being served and the service's limits."""

    name: str = Field(description="preset or config name")
    dataset: str
    num_classes: int
    classes: list[ClassInfo]
    crop_size: tuple[int, int] = Field(description="slide-window size (height, width)")
    stride: tuple[int, int] = Field(description="slide-window stride (height, width)")
    img_scale: tuple[int, int] = Field(description="test resize bounds (long, short side)")
    device: str
    behaviour: str = Field(description="'official' or 'modelscope' adapter behaviour")
    tta: bool = Field(description="whether requests use test-time augmentation by default")
    limits: LimitsBody
