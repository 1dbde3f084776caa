#!/bin/sh
# Entrypoint of the compose `redis` service: writes the aclfile, then starts Redis.
#
#   entrypoint.sh redis-server [options...] --aclfile PATH [options...]
#
# Redis cannot read environment variables, so this fills in the `user` lines of users.acl
# (next to this script, or IMAGEGEN_REDIS_ACL_TEMPLATE) with the SHA-256 of
# IMAGEGEN_REDIS_PRODUCER_PASSWORD and IMAGEGEN_REDIS_WORKER_PASSWORD, writes the result to
# the --aclfile PATH of the command (mode 600; hashes only, never a password), and then hands
# the command to the image's own entrypoint (docker-entrypoint.sh: drops root, sets the umask)
# or, outside the redis image, runs it as is.
set -eu

die() {
  echo "imagegen redis entrypoint: $*" >&2
  exit 1
}

template=${IMAGEGEN_REDIS_ACL_TEMPLATE:-$(dirname "$0")/users.acl}
[ -r "$template" ] || die "cannot read the ACL template $template"

aclfile=
previous=
for arg in "$@"; do
  if [ "$previous" = --aclfile ]; then
    aclfile=$arg
  fi
  previous=$arg
done
[ -n "$aclfile" ] || die "the command has no --aclfile PATH to write the users to"

# Passwords go into redis:// URLs unescaped and into space-separated ACL rules: only
# characters that need no escaping in either are allowed.
sha256_of() {
  name=$1
  value=$2
  case $value in
    "") die "$name is not set" ;;
    *[!A-Za-z0-9._~-]*) die "$name may only hold A-Z a-z 0-9 . _ ~ -" ;;
  esac
  [ "${#value}" -ge 16 ] || die "$name must be at least 16 characters long"
  printf '%s' "$value" | sha256sum | cut -d ' ' -f 1
}

producer=$(sha256_of IMAGEGEN_REDIS_PRODUCER_PASSWORD "${IMAGEGEN_REDIS_PRODUCER_PASSWORD:-}")
worker=$(sha256_of IMAGEGEN_REDIS_WORKER_PASSWORD "${IMAGEGEN_REDIS_WORKER_PASSWORD:-}")
[ "$producer" != "$worker" ] || die "the producer and worker passwords must differ"

mkdir -p "$(dirname "$aclfile")"
umask 077
# Redis' aclfile has no comments: keep only the `user` lines.
sed -n \
  -e "s/{{IMAGEGEN_REDIS_PRODUCER_PASSWORD_SHA256}}/$producer/g" \
  -e "s/{{IMAGEGEN_REDIS_WORKER_PASSWORD_SHA256}}/$worker/g" \
  -e '/^user /p' \
  "$template" >"$aclfile.tmp"
if grep -q '{{' "$aclfile.tmp"; then
  die "$template has a placeholder this script does not fill in"
fi
mv "$aclfile.tmp" "$aclfile"
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
  # docker-entrypoint.sh runs redis-server as the redis user
  chown redis "$aclfile"
fi

if command -v docker-entrypoint.sh >/dev/null 2>&1; then
  exec docker-entrypoint.sh "$@"
fi
exec "$@"
