"""The typed answers of every endpoint, and the JSON request: what /openapi.json publishes."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class ImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(None, description="echoed back in the answer (never used as a path)")
    data: str = Field(..., description="the file's bytes in base64 (a data: URL prefix is allowed)")


class ClassifyRequest(BaseModel):
    """The JSON form of POST /v1/classify (programs); the multipart form takes the same fields."""

    model_config = ConfigDict(extra="forbid")

    images: list[ImageIn] = Field(..., min_length=1, description="JPEG, PNG, TIFF or FITS files")
    tta: bool = Field(False, description="average over the 8 rotations and flips")
    mc_samples: int = Field(0, ge=0, description="MC dropout samples (0: off; else 2 or more)")
    saliency: bool = Field(False, description="add a Grad-CAM overlay (PNG data URL) to each answer")


class ImageResult(BaseModel):
    name: str = Field(..., description="the file name sent (or image-N)")
    predicted: Optional[str] = Field(None, description="the predicted class (votes runs: by the preset; "
                                                       "null when the fractions meet no rule)")
    probabilities: Optional[dict[str, float]] = Field(None, description="classes runs: per class, in the run's order")
    fractions: Optional[dict[str, float]] = Field(None, description="votes runs: the 37 cumulative vote fractions")
    entropy: Optional[float] = Field(None, description="of the class distribution (votes: question 1), in nats")
    std: Optional[float] = Field(None, description="MC dropout: std of the top class's probability")
    mutual_info: Optional[float] = Field(None, description="MC dropout: mutual information (BALD), in nats")
    note: Optional[str] = Field(None, description="a conversion made (PNG content, grey, another size)")
    saliency: Optional[str] = Field(None, description="Grad-CAM overlay as a PNG data URL")
    error: Optional[str] = Field(None, description="why this image could not be classified (the others were)")


class ClassifyResponse(BaseModel):
    request_id: str
    model: str
    backend: str
    tta: bool
    mc_samples: int
    results: list[ImageResult]


class ImageProblem(BaseModel):
    name: str
    error: str


class ErrorResponse(BaseModel):
    error: str = Field(..., description="a short code: upload_too_large, too_many_images, bad_request, ...")
    message: str = Field(..., description="what was wrong, and what is allowed")
    request_id: Optional[str] = None
    details: Optional[list[ImageProblem]] = Field(None, description="per image, when none could be read")


class TrainingData(BaseModel):
    data: Optional[str] = Field(None, description="the prepared folder's name")
    preset: Optional[str] = None
    split_hash: Optional[str] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    train_class_counts: Optional[dict[str, int]] = None
    val_class_counts: Optional[dict[str, int]] = None
    epochs: Optional[int] = None
    best_epoch: Optional[int] = None


class LimitsInfo(BaseModel):
    max_upload_mb: float
    max_images: int
    max_pixels: int
    max_mc_samples: int
    max_saliency: int
    queue: int
    timeout_s: float


class ModelInfo(BaseModel):
    run: str
    model: str
    head: str
    classes: list[str] = Field(..., description="the answer's keys, in order (votes runs: the 37 columns)")
    preset: Optional[str] = Field(None, description="votes runs: the preset that derives `predicted`")
    image_size: int
    fov: str = Field(..., description="central crop in Kaggle (424 px) pixels, or auto")
    backend: str
    batch_size: int
    max_wait_ms: float
    mc_dropout: bool = Field(..., description="whether the model can answer mc_samples")
    weights_sha256: str
    training: TrainingData
    validation: dict[str, float] = Field(..., description="validation metrics: metrics.json's when evaluated, "
                                                          "else training's best")
    limits: LimitsInfo


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str = Field(..., description="ready, or busy when the queue is full")
    in_flight: int = Field(..., description="classify requests in the server now")
    queue: int = Field(..., description="the most it takes at once")
    batches: int = Field(..., description="model calls so far")
    images: int = Field(..., description="images classified so far")
