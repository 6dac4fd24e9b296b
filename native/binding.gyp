{
  "targets": [
    {
      "target_name": "derecho_rdma",
      "sources": ["src/addon.cc", "src/region_table.cc", "src/completion_record.cc", "src/queue_limits.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["-libverbs", "-lrdmacm", "-lpthread"]
    }
  ]
}
