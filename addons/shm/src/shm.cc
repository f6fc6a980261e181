// koala_shm: the few system calls managed mode needs and Node does not offer (header comment of
// src/managed/native.ts). JavaScript validates every argument before calling in; errors are
// thrown as the KoalaError made by the factory handed to init().
//
//   create(path, bytes)          -> ArrayBuffer  new 0600 file (O_EXCL, O_NOFOLLOW), sized, mapped
//   open(path, uid, bytes)       -> ArrayBuffer  maps an existing file after checking it: regular,
//                                                owned by `uid`, no group / other bits, `bytes` long
//   createSealed(name, bytes)    -> {buffer, fd}  a memfd, sized, sealed against shrinking and
//                                                growing (and further sealing), mapped; `fd` stays
//                                                open for the peer to open through /proc
//   openSealed(pid, fd, uid, bytes) -> ArrayBuffer  maps /proc/<pid>/fd/<fd> after checking it is
//                                                a regular file of `uid`, `bytes` long, sealed so
//                                                that its owner can never shrink it under us
//   closeFd(fd)
//   peerCredentials(fd)          -> {pid, uid, gid} of a connected Unix socket's peer (SO_PEERCRED)
//   wake(fd)                     -> bool  one byte written on a non-blocking socket (false: full,
//                                         so a byte is pending there anyway, or the peer is gone)
//
// The ArrayBuffer is external: its memory is the mapping, unmapped by the buffer's finalizer, so
// the mapping lives exactly as long as some JavaScript view of it can be reached.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

constexpr int kAbiVersion = 3;

struct AddonData {
  Napi::FunctionReference make_error;  // (code, message) => KoalaError
};

[[noreturn]] void Throw(Napi::Env env, const char* code, const std::string& message) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data != nullptr && !data->make_error.IsEmpty()) {
    Napi::Value err = data->make_error.Call({Napi::String::New(env, code), Napi::String::New(env, message)});
    throw Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& what, int err) {
  Throw(env, err == EACCES || err == EPERM ? "KOALA_ERR_ACCESS_DENIED" : "KOALA_ERR_SYSTEM", what + ": " + std::strerror(err));
}

void Unmap(Napi::Env env, void* addr, size_t* bytes) {
  munmap(addr, *bytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(*bytes));
  delete bytes;
}

Napi::Value MapFd(Napi::Env env, int fd, size_t bytes, const std::string& path) {
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap " + path, err);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes));
  return Napi::ArrayBuffer::New(env, addr, bytes, Unmap, new size_t(bytes));
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = env.GetInstanceData<AddonData>();
  if (info.Length() != 1 || !info[0].IsFunction()) Throw(env, "KOALA_ERR_INVALID_ARGUMENT", "init: expected an error factory");
  data->make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  size_t bytes = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) ThrowErrno(env, "create " + path, errno);
  // umask can only clear bits; fchmod makes 0600 exact whatever it is.
  if (fchmod(fd, 0600) != 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    close(fd);
    unlink(path.c_str());
    ThrowErrno(env, "size " + path, err);
  }
  return MapFd(env, fd, bytes, path);
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  uid_t uid = static_cast<uid_t>(info[1].As<Napi::Number>().Int64Value());
  size_t bytes = static_cast<size_t>(info[2].As<Napi::Number>().Int64Value());
  int fd = open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) ThrowErrno(env, "open " + path, errno);
  struct stat st;
  std::string why;
  if (fstat(fd, &st) != 0) {
    why = std::string("fstat: ") + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (st.st_uid != uid) {
    why = "owned by uid " + std::to_string(st.st_uid) + ", not by the peer's uid " + std::to_string(uid);
  } else if ((st.st_mode & 077) != 0) {
    why = "readable or writable by group or others (mode must be 0600)";
  } else if (static_cast<size_t>(st.st_size) != bytes) {
    why = "is " + std::to_string(st.st_size) + " bytes, the peer said " + std::to_string(bytes);
  }
  if (!why.empty()) {
    close(fd);
    Throw(env, "KOALA_ERR_ACCESS_DENIED", "shared memory " + path + " refused: " + why);
  }
  return MapFd(env, fd, bytes, path);
}

// A mapping whose file shrinks under it raises SIGBUS at the next touch past the end: a peer that
// could truncate its ring would crash the daemon. A memfd sealed with F_SEAL_SHRINK cannot be
// shrunk by anyone, its creator included, and F_SEAL_SEAL keeps the seals as they are.
constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

Napi::Value CreateSealed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  size_t bytes = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0 || fcntl(fd, F_ADD_SEALS, kRingSeals) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "size and seal the ring memfd", err);
  }
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "mmap the ring memfd", err);
  }
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes));
  Napi::Object out = Napi::Object::New(env);
  out.Set("buffer", Napi::ArrayBuffer::New(env, addr, bytes, Unmap, new size_t(bytes)));
  out.Set("fd", Napi::Number::New(env, fd));
  return out;
}

Napi::Value OpenSealed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = info[0].As<Napi::Number>().Int32Value();
  int peer_fd = info[1].As<Napi::Number>().Int32Value();
  uid_t uid = static_cast<uid_t>(info[2].As<Napi::Number>().Int64Value());
  size_t bytes = static_cast<size_t>(info[3].As<Napi::Number>().Int64Value());
  std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(peer_fd);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open " + path, errno);
  struct stat st;
  std::string why;
  int seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &st) != 0) {
    why = std::string("fstat: ") + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (st.st_uid != uid) {
    why = "owned by uid " + std::to_string(st.st_uid) + ", not by the peer's uid " + std::to_string(uid);
  } else if (static_cast<size_t>(st.st_size) != bytes) {
    why = "is " + std::to_string(st.st_size) + " bytes, the peer said " + std::to_string(bytes);
  } else if (seals < 0 || (seals & kRingSeals) != kRingSeals) {
    why = "not a memfd sealed against shrinking, growing and resealing";
  }
  if (!why.empty()) {
    close(fd);
    Throw(env, "KOALA_ERR_ACCESS_DENIED", "ring memory " + path + " refused: " + why);
  }
  return MapFd(env, fd, bytes, path);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  close(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) ThrowErrno(env, "SO_PEERCRED", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

// A wake-up byte without Node's stream machinery: one send(2), MSG_DONTWAIT | MSG_NOSIGNAL. A
// full socket buffer means bytes the peer has not read yet, which wake it all the same.
Napi::Value Wake(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  static const char byte = 1;
  ssize_t n;
  do {
    n = send(fd, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return Napi::Boolean::New(info.Env(), n == 1 || errno == EAGAIN || errno == EWOULDBLOCK);
}

Napi::Object Module(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("create", Napi::Function::New(env, Create, "create"));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  exports.Set("createSealed", Napi::Function::New(env, CreateSealed, "createSealed"));
  exports.Set("openSealed", Napi::Function::New(env, OpenSealed, "openSealed"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("wake", Napi::Function::New(env, Wake, "wake"));
  return exports;
}

}  // namespace

NODE_API_MODULE(koala_shm, Module)
