// bhvit-run: run a compiled Relax VM library on a device without Python.
//
//   bhvit-run LIB.so INPUT.npy OUTPUT.npy [--batch B] [--runs N] [--warmup W] [--device cpu|cuda]
//   bhvit-run --cpu-features        (prints "ARCH: flag ...": what verify checks first)
//
// Loads LIB.so the way python's relax.VirtualMachine(tvm.runtime.load_module(p), tvm.cpu()) does
// (vm_load_executable, then vm_initialization with the CPU device and the pooled allocator), runs
// `main` on each [B, ...] block of the float32 C-order INPUT [G, ...] (G a multiple of B), writes
// the concatenated float32 outputs to OUTPUT [G, ...], then times `main` on the first block
// (W warm-up runs, N timed runs) and prints one JSON line: {"latency_ms": [...], "cpu_ms": [...], "batch": B}
// (cpu_ms: the calling thread's CPU time per run: all of the work at TVM_NUM_THREADS=1, and unlike the
// wall time not inflated when a busy machine preempts the process).
// Any error: one line on stderr, exit status 2. Threads: TVM_NUM_THREADS, as for any TVM runtime.
//
// --device cuda: loads libtvm_runtime_cuda.so (TVM's CUDA device API and module loader; it must sit
// next to this executable, like libtvm_runtime.so) before LIB.so, initialises the VM on (cuda:0,
// cpu) as relax.VirtualMachine(lib, tvm.cuda()) does, copies each input block to the GPU and each
// output back (runtime.TVMTensorCopyFromTo), and times `main` plus a stream sync.
//
// Only tvm-ffi headers are used: TVM's own runtime headers need dependencies its wheel lacks.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <time.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "cpu_features.h"
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // relax.VirtualMachine.POOLED_ALLOCATOR

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A model.so is compiled for one static input shape; TVM reports another batch as a raw
// "match_cast error ... annotation=R.Tensor((1, 3, 224, 224), ...)". Name the compiled shape instead.
std::string ShapeHint(const std::string& message, const std::vector<int64_t>& given) {
  const std::string tag = "annotation=R.Tensor((";
  size_t at = message.find(tag);
  if (message.find("match_cast") == std::string::npos || at == std::string::npos) return message;
  size_t end = message.find(")", at + tag.size());
  std::string compiled = message.substr(at + tag.size(), end - at - tag.size());
  std::ostringstream got, rest;
  for (size_t i = 0; i < given.size(); ++i) got << (i ? ", " : "") << given[i];
  for (size_t i = 1; i < given.size(); ++i) rest << ", " << given[i];
  std::string batch = compiled.substr(0, compiled.find(','));
  if (compiled.substr(compiled.find(',') == std::string::npos ? compiled.size() : compiled.find(',')) != rest.str())
    return message;  // not (only) the batch: TVM's message names the dimension
  return "the library is compiled for input [" + compiled + "] (batch " + batch + "), got [" + got.str() +
         "]: pass --batch " + batch + " (manifest.json input.shape), or recompile with `bhvit-export compile --batch N`";
}

struct Array32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

int64_t Numel(const std::vector<int64_t>& shape, size_t from = 0) {
  int64_t n = 1;
  for (size_t i = from; i < shape.size(); ++i) n *= shape[i];
  return n;
}

// Value of `key` in a .npy header dict, e.g. 'descr': '<f4' -> "'<f4'".
std::string HeaderField(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw Fail("npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  size_t end = header[start] == '(' ? header.find(')', start) + 1 : header.find(',', start);
  return header.substr(start, end - start);
}

// Minimal .npy reader: v1/v2/v3, little-endian float32, C order.
Array32 ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Fail("cannot open " + path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Fail(path + " is not a .npy file");
  uint32_t hlen = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  if (magic[6] == 1) {
    in.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    in.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  if (!in.read(&header[0], hlen)) throw Fail(path + ": truncated header");
  std::string descr = HeaderField(header, "descr");
  if (descr != "'<f4'") throw Fail(path + ": dtype " + descr + ", expected float32 ('<f4')");
  if (HeaderField(header, "fortran_order") != "False") throw Fail(path + ": Fortran order, expected C order");
  std::string shape = HeaderField(header, "shape");
  Array32 arr;
  for (size_t i = 1; i < shape.size();) {
    size_t j = shape.find_first_of("0123456789", i);
    if (j == std::string::npos) break;
    size_t e = shape.find_first_not_of("0123456789", j);
    arr.shape.push_back(std::stoll(shape.substr(j, e - j)));
    i = e;
  }
  if (arr.shape.empty()) throw Fail(path + ": a scalar, expected an array [G, ...]");
  arr.data.resize(Numel(arr.shape));
  if (!in.read(reinterpret_cast<char*>(arr.data.data()), arr.data.size() * sizeof(float)))
    throw Fail(path + ": truncated data");
  return arr;
}

void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& data) {
  std::ostringstream dict;
  dict << "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  dict << "), }";
  std::string header = dict.str();
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Fail("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                          static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<char*>(len), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
  if (!out) throw Fail("cannot write " + path);
}

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    t->data = std::malloc(ffi::GetDataSize(*t));
    if (t->data == nullptr) throw Fail("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// The float32 tensor a `main` returned (the first field of a tuple: the model has one output).
ffi::Tensor FirstTensor(const ffi::Any& out) {
  if (auto t = out.as<ffi::Tensor>()) return *t;
  if (auto a = out.as<ffi::Array<ffi::Any>>()) {
    if (a->size() > 0) return FirstTensor((*a)[0]);
  }
  throw Fail("main returned " + std::string(out.GetTypeKey()) + ", expected a tensor");
}

struct Args {
  std::string lib, input, output;
  int64_t batch = 1;
  int runs = 10, warmup = 2;
  bool cuda = false;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&](const char* name) -> long long {
      if (i + 1 >= argc) throw Fail(std::string(name) + " needs a value");
      char* end = nullptr;
      long long v = std::strtoll(argv[++i], &end, 10);
      if (*end != '\0' || v < 0) throw Fail(std::string(name) + " expects a non-negative integer");
      return v;
    };
    if (s == "--batch") a.batch = value("--batch");
    else if (s == "--runs") a.runs = static_cast<int>(value("--runs"));
    else if (s == "--warmup") a.warmup = static_cast<int>(value("--warmup"));
    else if (s == "--device") {
      if (i + 1 >= argc) throw Fail("--device needs a value (cpu or cuda)");
      std::string d = argv[++i];
      if (d != "cpu" && d != "cuda") throw Fail("--device must be cpu or cuda, got " + d);
      a.cuda = d == "cuda";
    }
    else if (s.rfind("--", 0) == 0) throw Fail("unknown option " + s);
    else pos.push_back(s);
  }
  if (pos.size() != 3)
    throw Fail("usage: bhvit-run LIB.so INPUT.npy OUTPUT.npy [--batch B] [--runs N] [--warmup W] [--device cpu|cuda]");
  if (a.batch < 1) throw Fail("--batch must be >= 1");
  a.lib = pos[0], a.input = pos[1], a.output = pos[2];
  return a;
}

// The folder of this executable (where the TVM runtime libraries of a bundle sit).
std::string ExeDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) throw Fail("cannot locate this executable (/proc/self/exe)");
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// Register TVM's CUDA device API and CUDA module loader (before LIB.so, whose device code needs it).
void LoadCudaPlugin() {
  std::string plugin = ExeDir() + "/libtvm_runtime_cuda.so";
  if (dlopen(plugin.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
    throw Fail(std::string("cannot load the CUDA runtime plugin: ") + dlerror());
}

ffi::Function Global(const char* name) {
  auto f = ffi::Function::GetGlobal(name);
  if (!f.has_value()) throw Fail(std::string("the TVM runtime has no ") + name);
  return *f;
}

int Run(const Args& a) {
  Array32 x = ReadNpy(a.input);
  const int64_t groups = x.shape[0];
  if (groups == 0 || groups % a.batch != 0)
    throw Fail("input has " + std::to_string(groups) + " rows, not a positive multiple of --batch " +
               std::to_string(a.batch));

  // dlopen searches the library path for a name without a slash: always pass an absolute path.
  if (a.cuda) LoadCudaPlugin();
  const DLDevice cpu{kDLCPU, 0}, gpu{kDLCUDA, 0};
  const DLDevice dev = a.cuda ? gpu : cpu;
  char* resolved = realpath(a.lib.c_str(), nullptr);
  if (resolved == nullptr) throw Fail("cannot open " + a.lib);
  std::string lib_path(resolved);
  std::free(resolved);
  ffi::Module lib = ffi::Module::LoadFromFile(lib_path);
  auto load = lib->GetFunction("vm_load_executable", true);
  if (!load.has_value()) throw Fail(a.lib + " is not a Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init.has_value()) throw Fail("the VM has no vm_initialization");
  if (a.cuda)  // the device first, then the CPU for shape functions (as relax.VirtualMachine does)
    (*init)(static_cast<int>(kDLCUDA), 0, kPooledAllocator, static_cast<int>(kDLCPU), 0, kPooledAllocator);
  else
    (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  auto main_fn = vm->GetFunction("main", false);
  if (!main_fn.has_value()) throw Fail(a.lib + " has no function main");
  ffi::Function run = *main_fn;

  std::vector<int64_t> block_shape = x.shape;
  block_shape[0] = a.batch;
  const int64_t block_numel = Numel(block_shape);
  const DLDataType f32{kDLFloat, 32, 1};
  ffi::Tensor in = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(block_shape), f32, cpu);
  ffi::Function copy = Global("runtime.TVMTensorCopyFromTo");
  ffi::Function sync = Global("runtime.Device_StreamSync");
  ffi::Tensor in_dev = in;
  if (a.cuda) {
    ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
    in_dev = alloc(ffi::Shape(block_shape), f32, gpu, nullptr).cast<ffi::Tensor>();
  }
  // One call on the host block `in`: upload (cuda), run, and the result on the host.
  auto call = [&]() -> ffi::Tensor {
    if (a.cuda) copy(in, in_dev);
    ffi::Tensor out = FirstTensor(run(in_dev));
    if (!a.cuda || out.device().device_type == kDLCPU) return out;
    ffi::Tensor host = ffi::Tensor::FromNDAlloc(CPUAlloc(), out.shape(), out.dtype(), cpu);
    copy(out, host);
    sync(dev, static_cast<int64_t>(0));
    return host;
  };

  std::vector<float> y;
  std::vector<int64_t> y_shape;
  for (int64_t g = 0; g < groups / a.batch; ++g) {
    std::memcpy(in.data_ptr(), x.data.data() + g * block_numel, block_numel * sizeof(float));
    ffi::Tensor out;
    try {
      out = call();
    } catch (const ffi::Error& e) {
      throw Fail(ShapeHint(e.kind() + ": " + e.message(), block_shape));
    }
    if (out.dtype().code != kDLFloat || out.dtype().bits != 32) throw Fail("main returned a non-float32 tensor");
    if (out.device().device_type != kDLCPU || !out.IsContiguous()) throw Fail("main returned a non-contiguous or non-CPU tensor");
    if (out.ndim() < 1 || out.shape()[0] != a.batch)
      throw Fail("main returned a tensor whose leading dim is not the batch " + std::to_string(a.batch));
    if (y_shape.empty()) y_shape.assign(out.shape().begin(), out.shape().end());
    const float* p = reinterpret_cast<const float*>(static_cast<const char*>(out.data_ptr()) + out.byte_offset());
    y.insert(y.end(), p, p + Numel(y_shape));
  }
  y_shape[0] = groups;
  WriteNpy(a.output, y_shape, y);

  std::memcpy(in.data_ptr(), x.data.data(), block_numel * sizeof(float));
  if (a.cuda) copy(in, in_dev);
  for (int i = 0; i < a.warmup; ++i) run(in_dev);
  sync(dev, static_cast<int64_t>(0));
  std::ostringstream json, cpu_ms;
  json << "{\"latency_ms\": [";
  for (int i = 0; i < a.runs; ++i) {
    timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    auto t0 = std::chrono::steady_clock::now();
    ffi::Any r = run(in_dev);
    sync(dev, static_cast<int64_t>(0));
    auto t1 = std::chrono::steady_clock::now();
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    json << (i ? ", " : "") << std::chrono::duration<double, std::milli>(t1 - t0).count();
    cpu_ms << (i ? ", " : "") << (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) * 1e-6;
  }
  json << "], \"cpu_ms\": [" << cpu_ms.str() << "], \"batch\": " << a.batch << ", \"device\": \"" << (a.cuda ? "cuda" : "cpu") << "\"}";
  std::cout << json.str() << std::endl;
  return 0;
}

// One line: TVM errors carry multi-line messages and tracebacks.
std::string OneLine(std::string s) {
  for (char& c : s) if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--cpu-features") {
    std::cout << CpuFeatureReport() << std::endl;
    return 0;
  }
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const ffi::Error& e) {
    std::cerr << "bhvit-run: " << OneLine(e.kind() + ": " + e.message()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bhvit-run: " << OneLine(e.what()) << std::endl;
  }
  return 2;
}
