// TLS and mTLS end to end, with certificates the suite makes with the openssl CLI in a
// temporary folder: a CA, a server certificate for localhost and 127.0.0.1 and a client
// certificate signed by it, and a second CA that signed nothing of ours. A manager that
// requires client certificates (mTLS) and a TLS worker holding one serve the SDK over
// TLS; plaintext clients, clients trusting the other CA and clients without a
// certificate are refused; a worker without a client certificate never attaches; bad
// TLS flags end either service with exit code 2 and the flag's name; `kvpool up`
// passes the TLS flags on and the CLI connects with --tls-*. The HTTP ports over HTTPS
// (--http-tls-*), mTLS on the worker's, driven by curl: /healthz, /metrics and a
// streamed OpenAI completion; plaintext, a wrong CA and a missing client certificate
// are refused.
#include "common/tls.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kvpool/client.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The openssl configuration: the extensions of each kind of certificate.
constexpr char kOpensslConfig[] = R"([req]
distinguished_name = dn
prompt = no
[dn]
CN = kvpool test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
)";

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/kvpool-tls-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    std::ofstream(Path("openssl.cnf")) << kOpensslConfig;
    MakeCa("ca");
    MakeCa("other-ca");
    MakeSigned("server", "localhost", "ca");
    MakeSigned("client", "kvpool test client", "ca");
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  static std::string Path(const std::string& name) { return dir_ + "/" + name; }

  // Runs an openssl command in the suite's folder; its output goes to openssl.log.
  static void Openssl(const std::string& args) {
    const std::string command = "cd " + dir_ + " && openssl " + args + " >>openssl.log 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << command << " failed: see " << Path("openssl.log");
  }
  // NAME.pem, self-signed, and its key NAME-key.pem (EC P-256: fast to make).
  static void MakeCa(const std::string& name) {
    Openssl(
        "req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "-config openssl.cnf -extensions ca -subj '/CN=" +
        name + "' -keyout " + name + "-key.pem -out " + name + ".pem");
  }
  // NAME.pem (extensions [NAME] of the config) and NAME-key.pem, signed by CA.pem.
  static void MakeSigned(const std::string& name, const std::string& cn, const std::string& ca) {
    Openssl(
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -config "
        "openssl.cnf -subj '/CN=" +
        cn + "' -keyout " + name + "-key.pem -out " + name + ".csr");
    Openssl("x509 -req -days 2 -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
            "-key.pem -set_serial " + std::to_string(++serial_) + " -extfile openssl.cnf " +
            "-extensions " + name + " -out " + name + ".pem");
  }

  // The flags of a server with the suite's certificate; mTLS with `client_ca`.
  static std::vector<std::string> ServerFlags(bool client_ca) {
    std::vector<std::string> flags = {"--tls-cert", Path("server.pem"), "--tls-key",
                                      Path("server-key.pem")};
    if (client_ca) flags.insert(flags.end(), {"--tls-client-ca", Path("ca.pem")});
    return flags;
  }
  // A manager requiring client certificates; the harness's channel presents one.
  static std::unique_ptr<ManagerProcess> MtlsManager() {
    std::vector<std::string> args = {"--model", "tiny-gpt2", "--num-blocks", "64"};
    for (const std::string& flag : ServerFlags(/*client_ca=*/true)) args.push_back(flag);
    return std::make_unique<ManagerProcess>(args, Credentials("ca", /*client_cert=*/true));
  }
  // Channel credentials trusting `ca`, with the client certificate when `client_cert`.
  static std::shared_ptr<grpc::ChannelCredentials> Credentials(const std::string& ca,
                                                               bool client_cert) {
    TlsFiles files;
    files.ca = Path(ca + ".pem");
    if (client_cert) {
      files.cert = Path("client.pem");
      files.key = Path("client-key.pem");
    }
    StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = TlsChannelCredentials(files);
    EXPECT_TRUE(credentials.ok()) << credentials.status().ToString();
    return credentials.ok() ? *credentials : nullptr;
  }
  // SDK options for `address`: one attempt, trusting `ca` ("" for plaintext), with the
  // client certificate when `client_cert`.
  static ClientOptions Sdk(const std::string& address, const std::string& ca, bool client_cert) {
    ClientOptions options;
    options.addresses = {address};
    options.deadline = std::chrono::seconds(30);
    options.max_attempts = 1;
    if (!ca.empty()) options.tls_ca_file = Path(ca + ".pem");
    if (client_cert) {
      options.tls_cert_file = Path("client.pem");
      options.tls_key_file = Path("client-key.pem");
    }
    return options;
  }

  static std::string dir_;
  static int serial_;
};

std::string TlsTest::dir_;
int TlsTest::serial_ = 0;

// Runs `argv` to its end (within 30 s) with stdout and stderr in `output`; the exit code,
// or -1 when it did not exit by itself.
int RunToExit(const std::vector<std::string>& argv, std::string* output) {
  Subprocess process(argv, MergedStderr());
  while (std::optional<std::string> line = process.ReadLine(std::chrono::seconds(30))) {
    *output += *line + "\n";
  }
  const std::optional<int> status = process.SignalAndWait(0, std::chrono::seconds(30));
  return status && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
}

TEST_F(TlsTest, MutualTlsNodeServesTheSdkAndRefusesEveryoneElse) {
  const std::unique_ptr<ManagerProcess> manager = MtlsManager();
  ASSERT_FALSE(manager->address().empty());
  std::vector<std::string> worker_flags = {
      "--model",           "tiny-gpt2",           "--threads",          "1",
      "--manager-tls-ca",  Path("ca.pem"),        "--manager-tls-cert", Path("client.pem"),
      "--manager-tls-key", Path("client-key.pem")};
  for (const std::string& flag : ServerFlags(/*client_ca=*/false)) worker_flags.push_back(flag);
  WorkerProcess worker(manager->address(), worker_flags, Credentials("ca", false));
  ASSERT_FALSE(worker.address().empty());

  // The SDK over TLS: tokens, health, and (with its certificate) the manager's stats.
  Client client(Sdk(worker.address(), "ca", /*client_cert=*/false));
  GenerateParams params;
  params.token_ids = RandomTokens(20, 61);
  params.max_tokens = 6;
  params.mode = "paged";
  params.ignore_eos = true;
  const StatusOr<GenerateResult> result = client.Generate(params);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(result->tokens.size(), 1u);
  EXPECT_EQ(result->tokens[0].size(), 6u);
  const StatusOr<bool> healthy = client.Healthy();
  ASSERT_TRUE(healthy.ok()) << healthy.status().ToString();
  EXPECT_TRUE(*healthy);
  const StatusOr<v1::GetStatsResponse> stats =
      Client(Sdk(manager->address(), "ca", /*client_cert=*/true)).ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_workers(), 1);

  // Plaintext, the wrong CA, and no client certificate for the mTLS manager: refused.
  const Status plaintext = Client(Sdk(worker.address(), "", false)).Generate(params).status();
  EXPECT_EQ(plaintext.code(), StatusCode::kUnavailable) << plaintext.ToString();
  const Status other_ca =
      Client(Sdk(worker.address(), "other-ca", false)).Generate(params).status();
  EXPECT_EQ(other_ca.code(), StatusCode::kUnavailable) << other_ca.ToString();
  const Status manager_plaintext =
      Client(Sdk(manager->address(), "", false)).ManagerStats().status();
  EXPECT_EQ(manager_plaintext.code(), StatusCode::kUnavailable) << manager_plaintext.ToString();
  const Status no_certificate =
      Client(Sdk(manager->address(), "ca", /*client_cert=*/false)).ManagerStats().status();
  EXPECT_EQ(no_certificate.code(), StatusCode::kUnavailable) << no_certificate.ToString();
  const Status manager_other_ca =
      Client(Sdk(manager->address(), "other-ca", /*client_cert=*/true)).ManagerStats().status();
  EXPECT_EQ(manager_other_ca.code(), StatusCode::kUnavailable) << manager_other_ca.ToString();
}

TEST_F(TlsTest, WorkerWithoutClientCertificateNeverAttachesToAnMtlsManager) {
  const std::unique_ptr<ManagerProcess> manager = MtlsManager();
  ASSERT_FALSE(manager->address().empty());
  std::vector<std::string> argv = {KVPOOL_WORKER_BIN,  "--manager",   manager->address(),
                                   "--listen",         "127.0.0.1:0", "--model",
                                   "tiny-gpt2",        "--threads",   "1",
                                   "--manager-tls-ca", Path("ca.pem")};
  for (const std::string& flag : ServerFlags(/*client_ca=*/false)) argv.push_back(flag);
  Subprocess worker(argv, MergedStderr());
  static const std::string kListening = "kvpool-worker listening on ";
  std::string address;
  bool register_failed = false, attached = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  // Until it serves and has logged its failed registration, then 3 s more.
  auto until = deadline;
  while (std::chrono::steady_clock::now() < until) {
    const std::optional<std::string> line = worker.ReadLine(std::chrono::milliseconds(200));
    if (!line) continue;
    if (line->rfind(kListening, 0) == 0) address = line->substr(kListening.size());
    if (line->find("registering with " + manager->address() + " failed: UNAVAILABLE") !=
        std::string::npos) {
      register_failed = true;
    }
    if (line->rfind("kvpool-worker attached to ", 0) == 0) {
      attached = true;
      break;
    }
    if (!address.empty() && register_failed && until == deadline) {
      until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    }
  }
  ASSERT_FALSE(address.empty());
  EXPECT_TRUE(register_failed);
  EXPECT_FALSE(attached);
  const StatusOr<bool> healthy = Client(Sdk(address, "ca", false)).Healthy();
  ASSERT_TRUE(healthy.ok()) << healthy.status().ToString();
  EXPECT_FALSE(*healthy);  // NOT_SERVING
  const StatusOr<v1::GetStatsResponse> stats =
      Client(Sdk(manager->address(), "ca", /*client_cert=*/true)).ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_workers(), 0);
  EXPECT_TRUE(worker.SignalAndWait(SIGTERM, std::chrono::seconds(10)).has_value());
}

TEST_F(TlsTest, BadTlsFlagsExitTwoNamingTheFlag) {
  const std::string cert = Path("server.pem"), key = Path("server-key.pem");
  const std::string missing = Path("missing.pem");
  struct Case {
    std::vector<std::string> argv;
    std::vector<std::string> expected;  // in the output
  };
  const std::vector<std::string> manager = {KVPOOL_MANAGER_BIN, "--listen", "127.0.0.1:0", "--http",
                                            "127.0.0.1:0",      "--model",  "tiny-gpt2"};
  const std::vector<std::string> worker = {KVPOOL_WORKER_BIN, "--manager", "127.0.0.1:1", "--model",
                                           "tiny-gpt2"};
  auto with = [](std::vector<std::string> base, std::vector<std::string> extra) {
    base.insert(base.end(), extra.begin(), extra.end());
    return base;
  };
  const std::vector<Case> cases = {
      {with(manager, {"--tls-cert", cert}), {"--tls-cert needs --tls-key"}},
      {with(manager, {"--tls-key", key}), {"--tls-key needs --tls-cert"}},
      {with(manager, {"--tls-cert", missing, "--tls-key", key}), {"--tls-cert", missing}},
      {with(manager, {"--tls-client-ca", Path("ca.pem")}), {"--tls-client-ca", "needs --tls-cert"}},
      {with(manager, {"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing}),
       {"--tls-client-ca", missing}},
      {with(manager, {"--tls-cert", cert, "--tls-key", Path("openssl.cnf")}),
       {"--tls-key", "no PEM block"}},
      {with(worker, {"--tls-key", missing, "--tls-cert", cert}), {"--tls-key", missing}},
      {with(worker, {"--manager-tls-cert", Path("client.pem")}),
       {"--manager-tls-cert needs --manager-tls-key"}},
      {with(worker, {"--manager-tls-ca", missing}), {"--manager-tls-ca", missing}},
  };
  for (const Case& c : cases) {
    std::string output;
    const int exit_code = RunToExit(c.argv, &output);
    std::string command;
    for (const std::string& arg : c.argv) command += " " + arg;
    EXPECT_EQ(exit_code, 2) << command << "\n" << output;
    for (const std::string& expected : c.expected) {
      EXPECT_THAT(output, HasSubstr(expected)) << command;
    }
  }
}

TEST_F(TlsTest, KvpoolUpPassesTlsOnAndTheCliConnectsWithItsTlsFlags) {
  Subprocess up({KVPOOL_CLI_BIN,      "up",
                 "--workers",         "1",
                 "--model",           "tiny-gpt2",
                 "--threads",         "1",
                 "--num-blocks",      "64",
                 "--tls-cert",        Path("server.pem"),
                 "--tls-key",         Path("server-key.pem"),
                 "--tls-ca",          Path("ca.pem"),
                 "--tls-client-ca",   Path("ca.pem"),
                 "--tls-client-cert", Path("client.pem"),
                 "--tls-client-key",  Path("client-key.pem")});
  std::string manager, worker;
  bool ready = false;
  while (std::optional<std::string> line = up.ReadLine(std::chrono::seconds(120))) {
    if (line->rfind("manager ", 0) == 0) manager = line->substr(8);
    if (line->rfind("worker ", 0) == 0) worker = line->substr(7);
    if (*line == "ready") {
      ready = true;
      break;
    }
  }
  ASSERT_TRUE(ready);
  const std::string ca = " --tls-ca " + Path("ca.pem");
  const std::string client_cert =
      " --tls-cert " + Path("client.pem") + " --tls-key " + Path("client-key.pem");
  auto run = [](const std::string& args, std::string* output) {
    return RunToExit({"/bin/sh", "-c", std::string(KVPOOL_CLI_BIN) + " " + args}, output);
  };
  std::string output;
  EXPECT_EQ(
      run("generate --server " + worker +
              " --token-ids 1,2,3 --max-tokens 4 --ignore-eos --mode paged" + ca + client_cert,
          &output),
      0)
      << output;
  EXPECT_THAT(output, HasSubstr("completion 4"));
  output.clear();
  EXPECT_EQ(run("stats --server " + manager + ca + client_cert, &output), 0) << output;
  EXPECT_THAT(output, HasSubstr("manager " + manager));
  // Both servers require a client certificate; a bad flag is named.
  output.clear();
  EXPECT_EQ(run("stats --server " + manager + ca, &output), 1) << output;
  EXPECT_THAT(output, HasSubstr("UNAVAILABLE"));
  output.clear();
  EXPECT_EQ(run("generate --server " + worker + " --token-ids 1,2,3 --max-tokens 4" + ca, &output),
            1)
      << output;
  output.clear();
  EXPECT_EQ(run("generate --server " + worker + " --token-ids 1 --tls-cert " + Path("client.pem"),
                &output),
            1);
  EXPECT_THAT(output, HasSubstr("--tls-cert needs --tls-key"));
  const std::optional<int> status = up.SignalAndWait(SIGTERM, std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
}

// curl (a client nobody here wrote) with `args`: its exit code, `output` the body and
// then the status line "code=NNN".
int Curl(const std::string& args, std::string* output) {
  output->clear();
  return RunToExit(
      {"/bin/sh", "-c", "curl -sS --max-time 20 -w '\ncode=%{http_code}\n' " + args + " 2>&1"},
      output);
}

TEST_F(TlsTest, HttpPortsServeHttpsAndTheWorkersRequiresClientCertificates) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "64", "--http-tls-cert",
                          Path("server.pem"), "--http-tls-key", Path("server-key.pem")});
  ASSERT_FALSE(manager.http_address().empty());
  WorkerProcess worker(
      manager.address(),
      {"--model", "tiny-gpt2", "--threads", "1", "--http-tls-cert", Path("server.pem"),
       "--http-tls-key", Path("server-key.pem"), "--http-tls-client-ca", Path("ca.pem")});
  ASSERT_FALSE(worker.http_address().empty());
  const std::string ca = " --cacert " + Path("ca.pem");
  const std::string cert = " --cert " + Path("client.pem") + " --key " + Path("client-key.pem");
  std::string out;
  EXPECT_EQ(Curl(ca + " https://" + manager.http_address() + "/healthz", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("code=200"));
  EXPECT_EQ(Curl(ca + " https://" + manager.http_address() + "/metrics", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("kvpool_"));
  // Plaintext to an HTTPS port, and a server certificate from a CA the client does not
  // trust: no response.
  EXPECT_NE(Curl(" http://" + manager.http_address() + "/healthz", &out), 0) << out;
  EXPECT_THAT(out, Not(HasSubstr("code=200")));
  EXPECT_NE(
      Curl(" --cacert " + Path("other-ca.pem") + " https://" + manager.http_address() + "/healthz",
           &out),
      0)
      << out;

  // The worker's port wants a client certificate.
  EXPECT_NE(Curl(ca + " https://" + worker.http_address() + "/healthz", &out), 0) << out;
  EXPECT_THAT(out, Not(HasSubstr("code=200")));
  EXPECT_EQ(Curl(ca + cert + " https://" + worker.http_address() + "/healthz", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("code=200"));
  EXPECT_EQ(Curl(ca + cert + " -N -d '{\"model\": \"tiny-gpt2\", \"prompt\": [1, 2, 3], " +
                     "\"max_tokens\": 4, \"ignore_eos\": true, \"stream\": true}' https://" +
                     worker.http_address() + "/v1/completions",
                 &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("data: {\"id\":\"cmpl-"));
  EXPECT_THAT(out, HasSubstr("data: [DONE]"));
  // Keep-alive over TLS: two requests on one connection.
  EXPECT_EQ(Curl(ca + cert + " https://" + worker.http_address() + "/v1/models https://" +
                     worker.http_address() + "/healthz",
                 &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("\"object\":\"list\""));

  // Bad HTTP TLS flags end the service with exit code 2, naming the flag.
  const std::vector<std::string> base = {KVPOOL_MANAGER_BIN, "--listen", "127.0.0.1:0", "--http",
                                         "127.0.0.1:0",      "--model",  "tiny-gpt2"};
  for (const auto& [extra, expected] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--http-tls-cert", Path("server.pem")}, "--http-tls-key go together"},
           {{"--http-tls-cert", Path("server.pem"), "--http-tls-key", Path("client-key.pem")},
            "--http-tls-key"},
           {{"--http-tls-client-ca", Path("ca.pem")}, "needs --http-tls-cert"}}) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string output;
    EXPECT_EQ(RunToExit(argv, &output), 2) << output;
    EXPECT_THAT(output, HasSubstr(expected));
  }
}

}  // namespace
}  // namespace kvpool::integration
