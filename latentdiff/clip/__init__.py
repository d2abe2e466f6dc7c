"""The CLIP-style contrastive model trained here (Radford et al. 2021): image tower, text head over
frozen MiniLM token states, the symmetric InfoNCE loss and its metrics (zero-shot accuracy,
retrieval recall, CLIP score). DALL·E 2 (Ramesh et al. 2022) builds on its embeddings.
Training, loading and evaluation: ``latentdiff.pipelines.clip``; presets: ``latentdiff.presets.clip``."""

from latentdiff.clip.data import CaptionIds, fmnist_class_prompts
from latentdiff.clip.loss import CLIPLoss, in_batch_accuracy, info_nce, positives
from latentdiff.clip.metrics import (class_embeddings, clip_score, embed_images, embed_prompts,
                                     recall_from_similarity, retrieval_recall, zero_shot_accuracy)
from latentdiff.clip.model import CLIPConfig, CLIPModel, count_parameters

__all__ = ["CLIPConfig", "CLIPLoss", "CLIPModel", "CaptionIds", "class_embeddings", "clip_score", "count_parameters",
           "embed_images", "embed_prompts", "fmnist_class_prompts", "in_batch_accuracy", "info_nce", "positives",
           "recall_from_similarity", "retrieval_recall", "zero_shot_accuracy"]
