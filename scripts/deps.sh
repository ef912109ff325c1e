#!/usr/bin/env bash
# The one list of Debian 12 packages fluxpipe needs to build, test and run (`--test`: and the
# test command's browser).
# Each is named in README.md with the reason it was chosen.
set -euo pipefail
PACKAGES=(
  g++ cmake ninja-build pkg-config      # toolchain
  libboost-dev                          # Asio + Beast: the event-driven HTTP layer (header-only)
  libcpp-httplib-dev                    # the tests' HTTP client and loopback receivers
  nlohmann-json3-dev                    # JSON
  libsqlite3-dev                        # embedded durable store
  libpq-dev                             # PostgreSQL client: the shared store of several nodes
  postgresql                            # the PostgreSQL server the tests start on loopback
  libssl-dev                            # SHA-256, HMAC, CSPRNG, constant-time compare
  libcurl4-openssl-dev                  # outgoing webhooks
  libpng-dev                            # PNG images with text chunks
  libjpeg-dev libwebp-dev               # JPEG and WebP output of `fluxpipe generate`
  libsentencepiece-dev                  # the T5 tokenizer (SentencePiece unigram model)
  libicu-dev                            # Unicode classes, NFC and lower-casing for the CLIP tokenizer
  libgtest-dev                          # tests
  libdnnl-dev libopenblas-dev           # baselines in the engine benchmark (bench/core_bench)
  clang libclang-rt-14-dev              # libFuzzer targets (run briefly in the test command)
  python3-botocore                      # the reference the S3 request signer is tested against
  curl                                  # smoke checks in scripts
)
# Needed by the test command only (`deps.sh --test`): the server never runs a browser.
if [ "${1:-}" = "--test" ]; then
  PACKAGES+=(chromium)                  # the playground's browser test (driven by playwright-core)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
