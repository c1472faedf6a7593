// The CPU's instruction-set features as Linux names them, for verify's check before a library is
// loaded (bhvit-run --cpu-features, the RPC server's "bhvit.cpu_features"): one line
// "ARCH: name name ...", or "" when this program cannot tell.
//
// x86-64: the "flags" line of /proc/cpuinfo. aarch64: the HWCAP bits the kernel gives the process
// (names as in /proc/cpuinfo's "Features"), because qemu-user passes the *host's* /proc/cpuinfo
// through unchanged while it sets HWCAP for the CPU it emulates.
#pragma once

#include <fstream>
#include <string>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

inline std::string CpuFeatureReport() {
#if defined(__aarch64__)
  // linux/arch/arm64/include/uapi/asm/hwcap.h, bit i = name i
  static const char* const kHwcap[] = {
      "fp",    "asimd", "evtstrm",  "aes",   "pmull", "sha1",  "sha2",  "crc32",    "atomics", "fphp",  "asimdhp",
      "cpuid", "asimdrdm", "jscvt", "fcma",  "lrcpc", "dcpop", "sha3",  "sm3",      "sm4",     "asimddp", "sha512",
      "sve",   "asimdfhm", "dit",   "uscat", "ilrcpc", "flagm", "ssbs", "sb",       "paca",    "pacg"};
  static const char* const kHwcap2[] = {
      "dcpodp", "sve2",     "sveaes",   "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm",
      "svef32mm", "svef64mm", "svebf16", "i8mm",    "bf16",       "dgh",     "rng",    "bti",    "mte"};
  const unsigned long h1 = getauxval(AT_HWCAP), h2 = getauxval(AT_HWCAP2);
  std::string out = "aarch64:";
  for (size_t i = 0; i < sizeof(kHwcap) / sizeof(*kHwcap); ++i)
    if ((h1 >> i) & 1UL) out += std::string(" ") + kHwcap[i];
  for (size_t i = 0; i < sizeof(kHwcap2) / sizeof(*kHwcap2); ++i)
    if ((h2 >> i) & 1UL) out += std::string(" ") + kHwcap2[i];
  return out;
#elif defined(__x86_64__)
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    const size_t colon = line.find(':');
    if (line.rfind("flags", 0) == 0 && colon != std::string::npos) return "x86_64:" + line.substr(colon + 1);
  }
  return "";
#else
  return "";
#endif
}
