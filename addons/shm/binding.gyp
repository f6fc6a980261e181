# The shared-memory addon of managed mode (src/managed/native.ts). Built only by
# `npm run build:shm` (scripts/build-shm.mjs), never at install; links nothing beyond libc.
{
  "targets": [
    {
      "target_name": "koala_shm",
      "sources": ["src/shm.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc": ["-fvisibility=hidden", "-fvisibility-inlines-hidden", "-std=c++17"],
      "ldflags": ["-Wl,--version-script=<(module_root_dir)/exports.map"]
    }
  ]
}
