#!/usr/bin/env bash
# Stage datasets and Hugging Face weights from S3 onto each node of the `ray up` cluster, so
# that twenty GPU workers neither download from dataset hosts nor hit the model hub (rate
# limits, gated repos, outages) -- docs/cluster.md section 2.
#
# The S3 prefix is RAYBENCH_STAGE_S3 (s3://bucket/prefix), laid out as
#   $RAYBENCH_STAGE_S3/data/<dataset>/...   -> ${RAYBENCH_DATA:-/data}/<dataset>/...
#   $RAYBENCH_STAGE_S3/hf-cache/hub/...     -> ${HF_HOME:-~/.cache/huggingface}/hub/...
#
# Ray's cluster launcher runs setup commands over SSH and does not pass the environment of
# `ray up` to the nodes, nor expand variables in cluster.yaml. So the variable travels in a
# file: `configure` (on your machine) writes it to cluster/stage.env, which the repo's
# file_mounts entry copies to every node with the checkout; `sync` (on every node, from
# setup_commands) reads it. The file holds only the S3 prefix, never a credential: the nodes
# reach S3 through their instance profile.
#
#   cluster/stage.sh configure        write cluster/stage.env from RAYBENCH_STAGE_S3 (unset: off)
#   cluster/stage.sh up [ARGS...]     configure, then `ray up cluster.yaml ARGS...` from the repo root
#   cluster/stage.sh upload DATA_DIR  copy DATA_DIR and the local hub cache's timm models to the prefix
#   cluster/stage.sh sync             on a node: sync from the prefix when one is set, else nothing;
#                                     writes ~/.raybench/node.env, which the Ray start commands
#                                     source (HF_HUB_OFFLINE=1 only when staged)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stage_file="$here/stage.env"
node_env="$HOME/.raybench/node.env"
var=RAYBENCH_STAGE_S3

die() {
    echo "stage.sh: $*" >&2
    exit 2
}

# The prefix, validated and without trailing slashes. $1: the value, $2: where it came from.
checked_prefix() {
    local value=$1 origin=$2
    value=${value%"${value##*[!/]}"}
    if [[ ! $value =~ ^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/[A-Za-z0-9._=+/-]*)?$ ]]; then
        die "$origin: $var must be an S3 prefix like s3://my-bucket/raybench-stage (bucket name, then letters, digits, . _ = + - /), got '$1'"
    fi
    printf '%s\n' "$value"
}

# The configured prefix: the variable when this environment sets it, else cluster/stage.env.
# Prints nothing when staging is off.
configured_prefix() {
    if [[ -n ${RAYBENCH_STAGE_S3:-} ]]; then
        checked_prefix "$RAYBENCH_STAGE_S3" "the environment"
        return
    fi
    [[ -f $stage_file ]] || return 0
    local line value=""
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        case $line in
            "$var="*) value=${line#"$var="} ;;
            "" | "#"*) ;;
            *) die "$stage_file: expected '$var=s3://bucket/prefix' (or '$var=' for no staging) or a # comment, got '$line'" ;;
        esac
    done <"$stage_file"
    value=${value#[\"\']}
    value=${value%[\"\']}
    [[ -z $value ]] || checked_prefix "$value" "$stage_file"
}

configure() {
    local prefix
    prefix=$(configured_from_env)
    {
        echo "# Written by cluster/stage.sh configure from $var; read on every node by 'stage.sh sync'."
        echo "# Only the S3 prefix, never a credential. Empty: no staging (the nodes use the hub)."
        echo "$var=$prefix"
    } >"$stage_file.tmp"
    mv "$stage_file.tmp" "$stage_file"
    if [[ -n $prefix ]]; then
        echo "staging on: every node syncs $prefix/data and $prefix/hf-cache, then runs with HF_HUB_OFFLINE=1 ($stage_file)"
    else
        echo "staging off: $var is not set; the nodes download datasets and weights themselves ($stage_file)"
    fi
}

# configure's value: only this environment counts (an old cluster/stage.env must not win).
configured_from_env() {
    if [[ -n ${RAYBENCH_STAGE_S3:-} ]]; then
        checked_prefix "$RAYBENCH_STAGE_S3" "the environment"
    fi
    return 0
}

hf_home() {
    printf '%s\n' "${HF_HOME:-$HOME/.cache/huggingface}"
}

ensure_aws() {
    command -v aws >/dev/null 2>&1 && return 0
    echo "stage.sh: no aws CLI on this node; installing it with pip (awscli)"
    python3 -m pip install -q awscli
    hash -r
    command -v aws >/dev/null 2>&1 || die "the aws CLI is still missing after 'pip install awscli'; add it to the image"
}

make_dir() {
    mkdir -p "$1" 2>/dev/null && return 0
    # /data is not writable by the container's user: make it, then hand it over
    sudo -n mkdir -p "$1" && sudo -n chown "$(id -u):$(id -g)" "$1"
}

s3_sync() {
    local src=$1 dst=$2
    shift 2
    if ! aws s3 sync --only-show-errors "$@" "$src" "$dst"; then
        echo "stage.sh: 'aws s3 sync $src $dst' failed: check the prefix and that this node's instance profile may read it (docs/cluster.md)" >&2
        exit 1
    fi
}

files_in() {
    find "$1" -type f 2>/dev/null | wc -l | tr -d ' '
}

write_node_env() {
    mkdir -p "$(dirname "$node_env")"
    {
        echo "# Written by cluster/stage.sh sync; sourced by the Ray start commands (cluster.yaml)."
        printf '%s\n' "$@"
    } >"$node_env.tmp"
    mv "$node_env.tmp" "$node_env"
    # interactive shells (ray attach) get the same environment as the Ray processes
    local hook="[ -f ~/.raybench/node.env ] && . ~/.raybench/node.env  # raybench staging"
    grep -qxF "$hook" "$HOME/.bashrc" 2>/dev/null || echo "$hook" >>"$HOME/.bashrc"
}

sync_node() {
    local prefix data hf
    prefix=$(configured_prefix)
    if [[ -z $prefix ]]; then
        write_node_env "# staging off ($var not set): datasets and weights come from their sources"
        echo "staging off: $var is not set (cluster/stage.env); nothing synced, the hub stays online"
        return 0
    fi
    data=${RAYBENCH_DATA:-/data}
    hf=$(hf_home)
    ensure_aws
    make_dir "$data" || die "cannot create $data (set RAYBENCH_DATA to a writable folder)"
    mkdir -p "$hf"
    s3_sync "$prefix/data" "$data"
    s3_sync "$prefix/hf-cache" "$hf"
    write_node_env "# staged from $prefix: weights only from the local cache" "export HF_HUB_OFFLINE=1"
    echo "staged from $prefix: $(files_in "$data") files in $data, $(files_in "$hf") in $hf; HF_HUB_OFFLINE=1 for Ray on this node"
    if [[ $(files_in "$hf/hub") == 0 ]]; then
        echo "stage.sh: warning: $prefix/hf-cache/hub holds no weights; with HF_HUB_OFFLINE=1 pretrained backbones fail (raybench preflight names them)" >&2
    fi
}

upload() {
    local data=${1:-} prefix hf
    [[ -n $data ]] || die "usage: cluster/stage.sh upload DATA_DIR (the folder holding severstal/, gdxray/, ...)"
    [[ -d $data ]] || die "upload: $data is not a folder"
    prefix=$(configured_from_env)
    [[ -n $prefix ]] || die "upload: set $var=s3://bucket/prefix first"
    hf=$(hf_home)
    ensure_aws
    s3_sync "$data" "$prefix/data"
    # timm's models only; snapshots/ holds links into blobs/: upload the linked files there
    # (aws follows links) and skip blobs/, so each file is stored once and an offline hub
    # finds it under snapshots/ after the download
    s3_sync "$hf" "$prefix/hf-cache" --exclude '*' --include 'hub/models--timm--*' --exclude '*/blobs/*'
    echo "uploaded $data and $hf (timm models) to $prefix"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    configure) configure ;;
    up)
        configure
        cd "$here/.."
        exec ray up cluster.yaml "$@"
        ;;
    sync) sync_node ;;
    upload) upload "$@" ;;
    *) die "usage: cluster/stage.sh configure | up [ray up args] | sync | upload DATA_DIR" ;;
esac
