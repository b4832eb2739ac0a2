{
  "targets": [
    {
      "target_name": "phaul_fast",
      "sources": [
        "native/addon.cc",
        "native/criu_ops.cc",
        "native/criu_rpc.cc",
        "native/splice_relay.cc",
        "native/probe.cc",
        "native/page_server.cc",
        "native/dirty_tracker.cc",
        "native/dirty_tracker_binding.cc",
        "native/intervals.cc",
        "native/proc_maps.cc",
        "native/syscall_inject.cc",
        "native/page_reader.cc",
        "native/page_buffer.cc",
        "native/lazy_fill.cc",
        "native/lazy_fill_napi.cc",
        "native/socket_opts.cc",
        "native/batch_io.cc",
        "native/tcp_repair.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(pkg-config --cflags-only-I criu | sed 's/-I//g')"
      ],
      "libraries": [
        "<!@(pkg-config --libs criu)",
        "-lprotobuf-c"
      ],
      # No absolute path baked in: scripts/build-addon.js copies libcriu next to
      # the addon, found through $ORIGIN, so the build can move (and the package
      # be installed anywhere).
      "ldflags": ["-Wl,-rpath,'$$ORIGIN'"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fexceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"]
    }
  ]
}
