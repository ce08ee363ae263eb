#!/usr/bin/env bash
#
# Fetch the Penn Treebank and WikiText-2 corpora that the experiments train on.
#
# Perplexities are only comparable with the published AWD-LSTM / Fraternal
# Dropout numbers when the corpora are byte-identical to the ones used there,
# so every file is checked against a SHA-256 pinned in this script, whatever
# its source (download or local mirror). Run with --help for usage.
set -euo pipefail

readonly PROG=getdata.sh
readonly PTB_URL='http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz'
readonly WT2_URL='https://wikitext.smerity.com/wikitext-2-v1.zip'
SPLITS=(train valid test)

# Pinned here rather than read from a SHA256SUMS file at run time, so that a
# damaged or stale mirror cannot vouch for itself.
expected_sha256() {
  case $1 in
    penn/train.txt) echo fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf ;;
    penn/valid.txt) echo c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2 ;;
    penn/test.txt) echo dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0 ;;
    wikitext-2/train.txt) echo 9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f ;;
    wikitext-2/valid.txt) echo f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8 ;;
    wikitext-2/test.txt) echo d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0 ;;
    *) return 1 ;;
  esac
}

# Archive members are looked up with any leading "./" stripped, because
# tarballs differ in whether they record it. The members are streamed to the
# names we choose, so nothing in the archive decides where files are written.
# python3 is used rather than unzip, which many minimal systems lack.
EXTRACT_PY='
import os, shutil, sys, tarfile, zipfile

archive, outdir, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
wanted = dict(zip(pairs[0::2], pairs[1::2]))

def norm(name):
    while name.startswith("./"):
        name = name[2:]
    return name

def extract(members, opener):
    missing = [m for m in wanted if m not in members]
    if missing:
        raise LookupError("archive lacks " + ", ".join(missing))
    for member, name in wanted.items():
        with opener(members[member]) as src, open(os.path.join(outdir, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

try:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            extract({norm(i.filename): i for i in z.infolist()}, z.open)
    else:
        with tarfile.open(archive, "r:*") as t:
            extract({norm(i.name): i for i in t.getmembers() if i.isfile()}, t.extractfile)
except Exception as e:
    sys.exit("%s: %s" % (type(e).__name__, e))
'

readonly MIRROR_LAYOUT='DIR laid out as penn/{train,valid,test}.txt and wikitext-2/{train,valid,test}.txt'

usage() {
  cat <<'EOF'
Usage: getdata.sh [--from DIR] [--dest DIR] [--corpus penn|wikitext-2|all]

Put the Penn Treebank (Mikolov's preprocessed version) in DEST/penn/ and
WikiText-2 (v1) in DEST/wikitext-2/, as train.txt, valid.txt and test.txt.
Every file is verified against a SHA-256 checksum pinned in this script.

  --from DIR     copy from a local mirror instead of downloading; DIR holds
                 penn/{train,valid,test}.txt and wikitext-2/{train,valid,test}.txt
                 (default: $FD_DATA_MIRROR if set, otherwise download)
  --dest DIR     where to put the corpora (default: data/ next to this script)
  --corpus NAME  penn, wikitext-2 or all (default: all)
  -h, --help     show this help and exit

Corpora already present with the right checksums are left alone.

Environment:
  FD_DATA_MIRROR       mirror directory to use when --from is not given
  FD_DOWNLOAD_RETRIES  retries per download (default 3)
  FD_CONNECT_TIMEOUT   connect timeout per download attempt, seconds (default 15)
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage_error() {
  usage >&2
  die "$1; see the usage above"
}

work=''
cleanup() {
  if [[ -n $work ]]; then
    rm -rf -- "$work"
  fi
}
trap cleanup EXIT
# Without these, an interrupted run could skip the EXIT trap and leave its
# temporary directory behind.
trap 'exit 130' INT
trap 'exit 143' TERM

hostname_of_this_machine() {
  uname -n 2>/dev/null || echo unknown
}

# A run killed with SIGKILL (or by a power cut) cannot remove its work
# directory, so each run removes those whose owner, written beside the staged
# files, is a process of this machine that no longer exists. A directory being
# filled by a run in progress, or by another machine sharing the folder, stays;
# one without an owner file stays until it is a minute old (its run may be
# about to write it).
remove_stale_work_dirs() {
  local dir host pid
  for dir in "$1"/.getdata.??????; do
    [[ -d $dir && ! -L $dir ]] || continue
    host='' pid=''
    read -r host pid 2>/dev/null <"$dir/owner" || true
    if [[ -n $pid ]]; then
      [[ $host == "$(hostname_of_this_machine)" && $pid =~ ^[0-9]+$ ]] || continue
      if kill -0 "$pid" 2>/dev/null || [[ -d /proc/$pid ]]; then
        continue
      fi
    elif [[ -z $(find "$dir" -maxdepth 0 -mmin +1 2>/dev/null) ]]; then
      continue
    fi
    rm -rf -- "$dir" 2>/dev/null || true
  done
}

# Hashing stdin keeps odd characters in paths out of the tool's output format.
# Fails rather than printing an empty or garbled digest, which would otherwise
# be reported as a checksum mismatch.
sha256_of() {
  local out
  if command -v sha256sum >/dev/null 2>&1; then
    out=$(sha256sum <"$1") || return 1
  elif command -v shasum >/dev/null 2>&1; then
    out=$(shasum -a 256 <"$1") || return 1
  else
    out=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())' <"$1") || return 1
  fi
  out=${out%% *}
  [[ $out =~ ^[0-9a-f]{64}$ ]] || return 1
  printf '%s\n' "$out"
}

corpus_intact() {
  local dir=$1 corpus=$2 split file
  for split in "${SPLITS[@]}"; do
    file=$dir/$split.txt
    [[ -f $file ]] || return 1
    [[ $(sha256_of "$file") == "$(expected_sha256 "$corpus/$split.txt")" ]] || return 1
  done
}

verify_staged() {
  local staged=$1 corpus=$2 origin=$3 hint=$4 split want got
  for split in "${SPLITS[@]}"; do
    want=$(expected_sha256 "$corpus/$split.txt")
    got=$(sha256_of "$staged/$split.txt") \
      || die "could not compute the SHA-256 of $corpus/$split.txt; install sha256sum (coreutils), shasum or python3"
    if [[ $got != "$want" ]]; then
      die "checksum mismatch for $corpus/$split.txt from $origin: expected sha256 $want, got $got; $hint"
    fi
  done
}

stage_from_mirror() {
  local mirror=$1 corpus=$2 staged=$3 split src
  [[ -d $mirror ]] || die "mirror directory $mirror not found; pass --from DIR (or set FD_DATA_MIRROR=DIR), $MIRROR_LAYOUT"
  # Check every file before copying any, so a wrong mirror fails at once.
  for split in "${SPLITS[@]}"; do
    src=$mirror/$corpus/$split.txt
    [[ -f $src ]] || die "mirror file $src is missing; the mirror must be a $MIRROR_LAYOUT"
    [[ -r $src ]] || die "mirror file $src is not readable; fix its permissions or use another mirror"
  done
  for split in "${SPLITS[@]}"; do
    src=$mirror/$corpus/$split.txt
    # cat rather than cp: mirrors are often read-only, and the installed
    # copies should get ordinary permissions instead of inheriting that.
    cat -- "$src" >"$staged/$split.txt" || die "could not copy $src into $staged; is the destination full or read-only?"
  done
}

last_line() {
  [[ -s $1 ]] || return 0
  sed -n '$p' "$1" | tr -d '\r'
}

# Stalled transfers are abandoned (under 1 KiB/s for a minute) so a dead
# connection fails instead of hanging forever.
fetch() {
  local url=$1 out=$2 log=$3
  if command -v curl >/dev/null 2>&1; then
    local args=(--fail --location --connect-timeout "$connect_timeout" --retry "$retries"
      --speed-limit 1024 --speed-time 60 --output "$out" --url "$url")
    if [[ -t 2 ]]; then
      curl --progress-bar "${args[@]}"
    else
      # Captured so the failure can be reported on the single error line.
      curl --silent --show-error "${args[@]}" 2>"$log"
    fi
  elif command -v wget >/dev/null 2>&1; then
    wget --no-verbose --output-file="$log" --tries="$((retries + 1))" \
      --connect-timeout="$connect_timeout" --read-timeout=60 --output-document="$out" -- "$url"
  else
    die "neither curl nor wget is installed; install one, or copy from a local mirror with ./getdata.sh --from DIR, $MIRROR_LAYOUT"
  fi
}

url_for() {
  case $1 in
    penn) echo "$PTB_URL" ;;
    wikitext-2) echo "$WT2_URL" ;;
    *) return 1 ;;
  esac
}

stage_from_download() {
  local corpus=$1 staged=$2 url split archive log reason msg
  local members=()
  url=$(url_for "$corpus")
  case $corpus in
    penn)
      for split in "${SPLITS[@]}"; do
        members+=("simple-examples/data/ptb.$split.txt" "$split.txt")
      done
      ;;
    wikitext-2)
      for split in "${SPLITS[@]}"; do
        members+=("wikitext-2/wiki.$split.tokens" "$split.txt")
      done
      ;;
  esac
  command -v python3 >/dev/null 2>&1 \
    || die "python3 is needed to unpack the downloads; install it, or copy from a local mirror with ./getdata.sh --from DIR, $MIRROR_LAYOUT"
  archive=$work/${url##*/}
  log=$work/download.log
  if ! fetch "$url" "$archive" "$log"; then
    reason=$(last_line "$log")
    die "could not download $url${reason:+ ($reason)}; no network? copy from a local mirror with ./getdata.sh --from DIR, $MIRROR_LAYOUT"
  fi
  if ! msg=$(python3 -c "$EXTRACT_PY" "$archive" "$staged" "${members[@]}" 2>&1); then
    msg=$(printf '%s\n' "$msg" | sed -n '$p')
    die "could not unpack the $corpus files from ${url##*/} ($msg); the download is damaged or the archive changed upstream; retry, or copy from a local mirror with ./getdata.sh --from DIR"
  fi
  rm -f -- "$archive" "$log"
}

# Each file is renamed into place only after all three verified, and rename
# within one filesystem is atomic, so readers never see a partial file.
install_staged() {
  local staged=$1 target=$2 split
  mkdir -p -- "$target" || die "could not create $target; pass a writable --dest DIR"
  for split in "${SPLITS[@]}"; do
    mv -f -- "$staged/$split.txt" "$target/$split.txt" || die "could not move $split.txt into $target; pass a writable --dest DIR"
  done
}

strip_slashes() {
  local p=$1
  while [[ $p == */ && $p != / ]]; do
    p=${p%/}
  done
  printf '%s\n' "$p"
}

need_arg() {
  (($# >= 2)) || usage_error "option $1 needs an argument"
}

mirror=''
from_given=0
dest=''
dest_given=0
corpus=all
while (($#)); do
  case $1 in
    --*=*)  # --opt=value: the same as --opt value
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
      continue
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --from) need_arg "$@"; mirror=$2 from_given=1 ;;
    --dest) need_arg "$@"; dest=$2 dest_given=1 ;;
    --corpus) need_arg "$@"; corpus=$2 ;;
    -*) usage_error "unknown option '$1'" ;;
    *) usage_error "unexpected argument '$1'" ;;
  esac
  shift 2
done

case $corpus in
  penn | wikitext-2) corpora=("$corpus") ;;
  all) corpora=(penn wikitext-2) ;;
  *) usage_error "unknown corpus '$corpus' (use penn, wikitext-2 or all)" ;;
esac

mirror_label=''
if ((from_given)); then
  [[ -n $mirror ]] || usage_error "--from needs a directory"
elif [[ -n ${FD_DATA_MIRROR:-} ]]; then
  mirror=$FD_DATA_MIRROR
  mirror_label=' (FD_DATA_MIRROR)'
fi
if [[ -n $mirror ]]; then
  mirror=$(strip_slashes "$mirror")
  mirror_label=$mirror$mirror_label
fi

if ((dest_given)); then
  [[ -n $dest ]] || usage_error "--dest needs a directory"
  dest=$(strip_slashes "$dest")
else
  # Relative to the script, not the caller's cwd, so training code finds data/.
  dest=$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd)/data
fi

retries=${FD_DOWNLOAD_RETRIES:-3}
connect_timeout=${FD_CONNECT_TIMEOUT:-15}
[[ $retries =~ ^[0-9]+$ ]] || die "FD_DOWNLOAD_RETRIES must be a whole number, got '$retries'"
[[ $connect_timeout =~ ^[1-9][0-9]*$ ]] || die "FD_CONNECT_TIMEOUT must be a positive whole number of seconds, got '$connect_timeout'"

mkdir -p -- "$dest" || die "could not create $dest; pass a writable --dest DIR"
remove_stale_work_dirs "$dest"

for c in "${corpora[@]}"; do
  target=$dest/$c
  if corpus_intact "$target" "$c"; then
    echo "$c: already present in $target, checksums OK"
    continue
  fi
  # Staged inside the destination so the final mv is a same-filesystem rename.
  work=$(mktemp -d "$dest/.getdata.XXXXXX") || die "could not create a temporary directory in $dest; pass a writable --dest DIR"
  printf '%s %s\n' "$(hostname_of_this_machine)" "$$" >"$work/owner"
  staged=$work/$c
  mkdir -- "$staged"
  if [[ -n $mirror ]]; then
    stage_from_mirror "$mirror" "$c" "$staged"
    verify_staged "$staged" "$c" "mirror $mirror" \
      "the mirror is not the exact corpus; replace it with an unmodified copy or drop --from to download"
    install_staged "$staged" "$target"
    echo "$c: copied from $mirror_label, checksums OK"
  else
    stage_from_download "$c" "$staged"
    verify_staged "$staged" "$c" "the download" \
      "the download is not the exact corpus (truncated or changed upstream); retry, or copy a verified one with ./getdata.sh --from DIR"
    install_staged "$staged" "$target"
    echo "$c: downloaded from $(url_for "$c"), checksums OK"
  fi
  rm -rf -- "$work"
  work=''
done
