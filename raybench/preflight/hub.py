"""Hub weights (``pretrained: true``) answer with the credentials the workers will have: a
gated or missing repo names the model page and ``HF_TOKEN``. One HEAD request, no download."""

from __future__ import annotations

import os

from raybench.preflight.report import PreflightReport, Status
from raybench.study.spec import BackboneSpec

#: Hub answers (one HEAD request per weights file).
HUB_TIMEOUT_S = 15.0
#: Weights files timm fetches for a hub id: the safetensors file, else the PyTorch one.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_source(spec: BackboneSpec) -> tuple[str | None, str | None]:
    """(hub repo id, URL) timm fetches the entry's pretrained weights from."""
    from timm.models import get_pretrained_cfg

    from raybench.backbones import resolve_timm_name

    cfg = get_pretrained_cfg(resolve_timm_name(spec))
    if cfg is None:
        return None, None
    return getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)


def _hub_problem(repo: str, exc: BaseException, token_set: bool) -> str:
    """A clear message for a failed hub request."""
    from huggingface_hub import errors

    page = f"https://huggingface.co/{repo}"
    token = "HF_TOKEN is set" if token_set else "HF_TOKEN is not set"
    how = (
        "pass a read token (https://huggingface.co/settings/tokens) to the workers as HF_TOKEN "
        "(the environment of run_grid.py / raybench run, or ray job submit --runtime-env-json "
        '\'{"env_vars": {"HF_TOKEN": "..."}}\')'
    )
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"hf-hub:{repo} is gated ({token}): accept its licence on the model page {page} with "
            f"your Hugging Face account, then {how}"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"hf-hub:{repo} was not found or is private ({token}); check the model page {page} "
            f"and the backbone's timm_name; a private repo needs HF_TOKEN: {how}"
        )
    local = isinstance(exc, errors.LocalEntryNotFoundError)  # also an EntryNotFoundError: offline
    if isinstance(exc, errors.EntryNotFoundError) and not local:
        return f"hf-hub:{repo} has no weights file ({', '.join(HUB_FILES)}); see {page}"
    if status in (401, 403):
        return (
            f"hf-hub:{repo}: the hub refused the request ({status}; {token}): the token is invalid, "
            f"expired or lacks access to {page}; {how}"
        )
    offline = isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError))
    offline = offline or isinstance(exc, (ConnectionError, TimeoutError, OSError)) and status is None
    if offline:
        return (
            f"hf-hub:{repo} cannot be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "give the workers access to the hub (or HF_ENDPOINT for a mirror), or download the weights "
            "elsewhere and set `weights: /path/to/model.safetensors` on this backbone"
        )
    return f"hf-hub:{repo}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]} (model page {page})"


def check_hub_access(spec: BackboneSpec, what: str, report: PreflightReport, env_token_only: bool) -> None:
    """The entry's hub weights answer with the workers' credentials (a HEAD request, no
    download). ``env_token_only``: count only ``HF_TOKEN`` (what reaches the workers of a
    cluster), not this machine's ``huggingface-cli login`` token file."""
    import huggingface_hub as hf

    repo, url = _hub_source(spec)
    if repo is None:
        where = url or "nowhere (timm has no pretrained weights for it)"
        status: Status = "note" if url else "FAIL"
        report.add(status, what, f"pretrained weights come from {where}: not checked")
        return
    token_env = os.environ.get("HF_TOKEN") or None
    token: str | bool | None = token_env if (token_env or not env_token_only) else False
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        cached = [f for f in HUB_FILES if isinstance(hf.try_to_load_from_cache(repo, f), str)]
        if cached:
            report.add("ok", what, f"hf-hub:{repo} is in the cache ({cached[0]}; HF_HUB_OFFLINE is set)")
        else:
            report.add(
                "FAIL",
                what,
                f"HF_HUB_OFFLINE is set and hf-hub:{repo} is not in the cache {hf.constants.HF_HUB_CACHE} "
                f"(on {report.where}); unset HF_HUB_OFFLINE, or fill the cache first, or set `weights:`",
            )
        return
    last: BaseException | None = None
    for filename in HUB_FILES:
        try:
            hf.get_hf_file_metadata(hf.hf_hub_url(repo, filename), token=token, timeout=HUB_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - mapped to a message below
            last = exc
            missing = isinstance(exc, hf.errors.EntryNotFoundError)
            if missing and not isinstance(exc, hf.errors.LocalEntryNotFoundError):
                continue  # try the other file, as timm does
            break
        else:
            who = "with HF_TOKEN" if token_env else "without a token"
            report.add("ok", what, f"hf-hub:{repo} ({filename}) is reachable {who}")
            return
    assert last is not None
    report.add("FAIL", what, _hub_problem(repo, last, bool(token_env)))
