#!/usr/bin/env bash
# Debian packages the project needs: espeak-ng and sox (test speech), ffmpeg,
# portaudio (to build PyAudio), and the shared libraries OpenCV's wheel loads.
# EXTRA_DEBIAN_PACKAGES adds more (CI: chromium, for the browser test).
set -euo pipefail
# shellcheck disable=SC2206
pkgs=(espeak-ng sox ffmpeg portaudio19-dev libgl1 libglib2.0-0 ${EXTRA_DEBIAN_PACKAGES:-})
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
