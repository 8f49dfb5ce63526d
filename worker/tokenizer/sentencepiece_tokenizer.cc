// LoadSentencePiece: opens the kvpool_spm module (tokenizer/spm/spm_module.cc) in its
// own symbol scope and asks it for a Tokenizer over a tokenizer.model file. See the
// module for why libsentencepiece is never linked into a process directly.
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "tokenizer/tokenizer.h"

namespace kvpool {

#if KVPOOL_HAVE_SENTENCEPIECE
namespace {

using CreateFn = Tokenizer* (*)(const char*, char*, size_t);

CreateFn LoadModule() {
  static std::once_flag once;
  static CreateFn create = nullptr;
  static std::string error;
  std::call_once(once, [] {
    const char* env = std::getenv("KVPOOL_SPM_MODULE");
    const std::string path = env != nullptr && *env != '\0' ? env : KVPOOL_SPM_MODULE;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      error = "cannot load the SentencePiece module '" + path + "': " + dlerror() +
              " (set KVPOOL_SPM_MODULE to libkvpool_spm.so)";
      return;
    }
    create = reinterpret_cast<CreateFn>(dlsym(handle, "kvpool_spm_create"));
    if (create == nullptr) error = "'" + path + "' has no kvpool_spm_create";
  });
  if (create == nullptr) throw std::runtime_error(error);
  return create;
}

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& model_file) {
  char error[1024] = {0};
  Tokenizer* tok = LoadModule()(model_file.c_str(), error, sizeof(error));
  if (tok == nullptr) throw std::runtime_error(error);
  return std::unique_ptr<Tokenizer>(tok);
}

#else

std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& model_file) {
  throw std::runtime_error("cannot load SentencePiece model '" + model_file +
                           "': kvpool was built without libsentencepiece "
                           "(install libsentencepiece-dev and reconfigure)");
}

#endif

}  // namespace kvpool
