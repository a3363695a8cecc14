"""The Hugging Face Hub: folders or repo ids in, model cards and uploads out.

Every ``from_pretrained`` of fourm (``FourM``, ``ImageTokenizer``, ``TextTokenizer``,
``load_tokenizers``, ``fourm.compat.ml4m.load_ml4m``) takes a local folder or a Hub repo id and
goes through :func:`resolve_pretrained`::

    FourM.from_pretrained("models/shapes_bundled")                       # a folder
    FourM.from_pretrained("org/fourm-shapes", revision="v1.0")           # branch, tag or commit
    FourM.from_pretrained("org/fourm-shapes", cache_dir="/data/hf", local_files_only=True)
    model.push_to_hub("org/fourm-shapes", branch="v1.1")                 # save_pretrained + upload

A folder that exists wins; anything else that reads as a repo id (``name`` or ``owner/name``) is
fetched with ``huggingface_hub.snapshot_download`` into the standard cache (``HF_HUB_CACHE`` or
``cache_dir``), which also serves it offline (``HF_HUB_OFFLINE=1``) once it is there.

Why not ``huggingface_hub.ModelHubMixin``: its ``from_pretrained`` turns the keys of
``config.json`` into constructor arguments and forwards any other keyword through
``**model_kwargs``, while fourm's ``config.json`` carries a format name, a version and (image
tokenizers) the weights' sha256 that must be checked before anything is built, and fourm's
loaders take their Hub arguments by name so that a misspelt one raises. The mixin's parts that
fit are used as they are: the snapshot cache, ``ModelCard``/``ModelCardData`` front matter and
``HfApi.upload_folder``.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fourm.atomic import atomic_write_text

LIBRARY_NAME = "fourm"
LICENSE = "apache-2.0"
MODEL_CARD = "README.md"
# A Hub repo id: "name" or "owner/name" of letters, digits, "-", "_" and "." (huggingface_hub's rule).
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub repo id (``name`` or ``owner/name``)."""
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name and "--" not in name and not name.endswith((".", "-"))


def resolve_pretrained(path_or_repo_id: str | os.PathLike, *, what: str, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                       local_files_only: bool = False, force_download: bool = False,
                       allow_patterns: list[str] | None = None) -> Path:
    """The local folder of a saved model: ``path_or_repo_id`` itself, or its Hub snapshot.

    Args:
        path_or_repo_id: a folder, or a Hub repo id (``owner/name``).
        what: the folder expected, for error messages (``"a FourM folder (config.json +
            model.safetensors)"``).
        revision: branch, tag or commit of a repo id (default: ``main``); not allowed for a folder.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
        token: Hub token (default: the one ``hf auth login`` stored, if any).
        local_files_only: never reach the network; the snapshot must be in the cache (as with
            ``HF_HUB_OFFLINE=1``).
        force_download: fetch the files again even if they are cached.
        allow_patterns: only fetch files matching these glob patterns (default: every file).

    Returns:
        The folder (for a repo id: its snapshot in the cache, named after the commit).

    Raises:
        FileNotFoundError: neither a folder nor a repo id that could be fetched; the message names
            both attempts and how to fix them.
        ValueError: ``revision`` given with a local folder.
    """
    folder = Path(path_or_repo_id)
    if folder.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} selects a version of a Hub repo, but {str(folder)!r} is a local "
                             "folder; drop revision, or give the repo id")
        return folder
    name = str(path_or_repo_id)
    if folder.exists():
        raise FileNotFoundError(f"{name}: a file; expected {what}")
    if not looks_like_repo_id(name):
        raise FileNotFoundError(f"{name}: no such folder (working directory {Path.cwd()}), and not a Hub repo id "
                                f"(owner/name); expected {what}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    import fourm

    try:
        return Path(snapshot_download(
            repo_id=name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
            force_download=force_download, allow_patterns=allow_patterns, library_name=LIBRARY_NAME,
            library_version=fourm.__version__))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(f"{name}: no such folder (working directory {Path.cwd()}), and Hub repo {name!r}{at} "
                                f"could not be loaded ({type(e).__name__}: {first}); expected {what}, or a repo id "
                                "that is in the Hub cache (offline) or reachable") from e


@dataclass(frozen=True)
class CardInfo:
    """What a model card says about a saved folder: its title, a paragraph, and front matter.

    Args:
        title: the card's heading.
        summary: a paragraph under it (Markdown).
        pipeline_tag: the Hub task (``any-to-any`` for FourM).
        tags: Hub tags; ``fourm`` is always added.
        datasets: data the weights were trained on (Hub dataset ids or names).
    """

    title: str
    summary: str
    pipeline_tag: str
    tags: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def card_text(self) -> str:
        """The README.md text: YAML front matter (library, licence, tags, datasets, pipeline), heading, summary."""
        from huggingface_hub import ModelCardData

        data = ModelCardData(library_name=LIBRARY_NAME, license=LICENSE, pipeline_tag=self.pipeline_tag,
                             tags=sorted({LIBRARY_NAME, *self.tags}), datasets=list(self.datasets) or None)
        return f"---\n{data.to_yaml()}\n---\n\n# {self.title}\n\n{self.summary.strip()}\n"


def write_model_card(folder: str | os.PathLike, info: CardInfo, overwrite: bool = False) -> Path:
    """Write ``folder/README.md`` from ``info``; an existing card (say, written by hand) is kept
    unless ``overwrite``, as ``huggingface_hub`` does. Returns its path."""
    path = Path(folder) / MODEL_CARD
    if overwrite or not path.exists():
        atomic_write_text(path, info.card_text())
    return path


def read_card_metadata(folder: str | os.PathLike) -> dict:
    """The front matter of ``folder/README.md`` as a dict ({} without a card or front matter)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / MODEL_CARD
    return ModelCard.load(path).data.to_dict() if path.is_file() else {}


def upload_folder(folder: str | os.PathLike, repo_id: str, *, branch: str | None = None,
                  commit_message: str | None = None, private: bool | None = None, token: str | None = None,
                  create_pr: bool = False) -> str:
    """Create ``repo_id`` if needed (and ``branch``) and upload ``folder`` in one commit.

    Returns:
        The URL of the commit (or of the pull request with ``create_pr``).
    """
    from huggingface_hub import HfApi

    import fourm

    if not looks_like_repo_id(repo_id):
        raise ValueError(f"repo_id={repo_id!r} is not a Hub repo id; use 'owner/name'")
    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=fourm.__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch is not None:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch, create_pr=create_pr,
                               commit_message=commit_message or f"Upload with fourm {fourm.__version__}")
    return str(getattr(commit, "pr_url", None) or getattr(commit, "commit_url", commit))


class PushToHubMixin:
    """``push_to_hub`` for any class with ``save_pretrained(folder, card=...)`` and ``model_card()``:
    save into a temporary folder (weights, config, model card), then upload it as one commit."""

    def push_to_hub(self, repo_id: str, *, branch: str | None = None, commit_message: str | None = None,
                    private: bool | None = None, token: str | None = None, create_pr: bool = False,
                    card: CardInfo | None = None) -> str:
        """Save and upload to the Hub repo ``repo_id`` (created if missing).

        Args:
            repo_id: ``owner/name``.
            branch: push to this branch (created if missing; default ``main``). Load it back with
                ``from_pretrained(repo_id, revision=branch)``.
            commit_message: default ``"Upload with fourm <version>"``.
            private: visibility of a repo that is created (None: the account's default).
            token: Hub token (default: the stored one).
            create_pr: open a pull request instead of committing to the branch.
            card: the model card (default :meth:`model_card`; e.g. ``dataclasses.replace(model.model_card(),
                datasets=("my/data",))``).

        Returns:
            The URL of the commit or pull request.
        """
        with tempfile.TemporaryDirectory(prefix="fourm-push-") as tmp:
            self.save_pretrained(tmp, card=card)
            return upload_folder(tmp, repo_id, branch=branch, commit_message=commit_message, private=private,
                                 token=token, create_pr=create_pr)
