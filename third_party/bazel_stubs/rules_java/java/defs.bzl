"""Offline stub of @rules_java//java:defs.bzl: the native rules under the names @bazel_tools loads."""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_runtime = native.java_runtime
java_toolchain = native.java_toolchain
