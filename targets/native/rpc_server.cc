// bhvit-rpc-server: a minimal TVM RPC server for devices without Python (and for qemu-user).
//
//   bhvit-rpc-server [--host 127.0.0.1] [--port 9090] [--key KEY]
//
// Speaks the handshake of python's tvm.rpc.server (magic, "client:KEY" -> "server:KEY"), then
// hands the socket to the runtime's own rpc.ServerLoop, so an unmodified tvm.rpc.connect() can
// upload a library, load_module it, run a Relax VM on remote.cpu() and use time_evaluator.
// Each session runs in a forked child with its own temporary work dir (as the python server
// does), so a crashing model cannot take the server down; sessions are served one at a time.
// On start it prints one JSON line {"host": ..., "port": ...} (the bound port, useful with 0).
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

#include "cpu_features.h"

namespace ffi = tvm::ffi;

namespace {

constexpr int32_t kRPCMagic = 0xFF271;  // tvm/rpc/base.py RPC_MAGIC; +0 success, +2 key mismatch

bool RecvAll(int fd, void* buf, size_t n) {
  for (char* p = static_cast<char*>(buf); n > 0;) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r, n -= static_cast<size_t>(r);
  }
  return true;
}

bool SendInt(int fd, int32_t v) { return send(fd, &v, 4, MSG_NOSIGNAL) == 4; }  // little-endian hosts only

// The python server's key exchange; true when the client may start a session.
bool Handshake(int fd, const std::string& key) {
  int32_t magic = 0, len = 0;
  if (!RecvAll(fd, &magic, 4) || magic != kRPCMagic) return false;
  if (!RecvAll(fd, &len, 4) || len < 0 || len > 4096) return false;
  std::string client(static_cast<size_t>(len), '\0');
  if (!RecvAll(fd, &client[0], client.size())) return false;
  if (client.substr(0, client.find(' ')) != "client:" + key) {  // options (-timeout=) follow a space
    SendInt(fd, kRPCMagic + 2);
    return false;
  }
  const std::string server = "server:" + key;
  return SendInt(fd, kRPCMagic) && SendInt(fd, static_cast<int32_t>(server.size())) &&
         send(fd, server.data(), server.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(server.size());
}

// A session: what python's _serve_loop does, with the two env functions it registers, plus
// "bhvit.cpu_features" (verify asks it before uploading a library the CPU could not run).
[[noreturn]] void Serve(int fd) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the server
  char tmpl[] = "/tmp/bhvit-rpc-XXXXXX";
  const std::string work = mkdtemp(tmpl) ? tmpl : "/tmp";
  int status = 0;
  try {
    ffi::reflection::GlobalDef()
        .def("tvm.rpc.server.workpath", [work](ffi::String name) { return ffi::String(work + "/" + std::string(name)); })
        .def("tvm.rpc.server.load_module", [work](ffi::String name) {
          return ffi::Module::LoadFromFile(ffi::String(work + "/" + std::string(name)));
        })
        .def("bhvit.cpu_features", []() { return ffi::String(CpuFeatureReport()); });
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(fd);
  } catch (const std::exception& e) {
    std::cerr << "bhvit-rpc-server: session failed: " << e.what() << std::endl;
    status = 1;
  }
  std::error_code ignored;
  if (work != "/tmp") std::filesystem::remove_all(work, ignored);
  _exit(status);
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1", key;
  int port = 9090;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string opt = argv[i];
    if (opt == "--host") host = argv[i + 1];
    else if (opt == "--port") port = std::atoi(argv[i + 1]);
    else if (opt == "--key") key = argv[i + 1];
    else { std::cerr << "bhvit-rpc-server: unknown option " << opt << std::endl; return 2; }
  }
  if (argc % 2 == 0) { std::cerr << "bhvit-rpc-server: usage: [--host H] [--port P] [--key K]" << std::endl; return 2; }
  int lsock = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    std::cerr << "bhvit-rpc-server: not an IPv4 address: " << host << std::endl;
    return 2;
  }
  if (bind(lsock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(lsock, 8) != 0) {
    std::cerr << "bhvit-rpc-server: cannot listen on " << host << ":" << port << ": " << strerror(errno) << std::endl;
    return 2;
  }
  socklen_t alen = sizeof(addr);
  getsockname(lsock, reinterpret_cast<sockaddr*>(&addr), &alen);
  std::cout << "{\"host\": \"" << host << "\", \"port\": " << ntohs(addr.sin_port) << "}" << std::endl;
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    int conn = accept(lsock, nullptr, nullptr);
    if (conn < 0) continue;
    if (!Handshake(conn, key)) { close(conn); continue; }
    pid_t child = fork();
    if (child == 0) { close(lsock); Serve(conn); }
    close(conn);
    if (child > 0) waitpid(child, nullptr, 0);
  }
}
