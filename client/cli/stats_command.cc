// `kvpool stats`: the counters of each --server, whether it is a kvpool-worker
// (Worker.GetStats) or a kvpool-manager (CacheManager.GetStats, tried when the first
// answers UNIMPLEMENTED), as a two-column table or, with --json, one JSON object per
// server with the proto's own field names. A server that fails is reported on stderr
// and the others are still printed; the exit code is then 1.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <iostream>

#include "client/cli/cli_util.h"

namespace kvpool::cli {
namespace {

struct StatsFlags {
  ConnectionFlags connection;
  bool json = false;
};

std::string FieldValue(const google::protobuf::Message& message,
                       const google::protobuf::FieldDescriptor& field) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection& r = *message.GetReflection();
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return std::to_string(r.GetInt32(message, &field));
    case FieldDescriptor::CPPTYPE_INT64:
      return std::to_string(r.GetInt64(message, &field));
    case FieldDescriptor::CPPTYPE_UINT32:
      return std::to_string(r.GetUInt32(message, &field));
    case FieldDescriptor::CPPTYPE_UINT64:
      return std::to_string(r.GetUInt64(message, &field));
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      char buffer[32];
      std::snprintf(buffer, sizeof(buffer), "%.4f", r.GetDouble(message, &field));
      return buffer;
    }
    case FieldDescriptor::CPPTYPE_BOOL:
      return r.GetBool(message, &field) ? "true" : "false";
    case FieldDescriptor::CPPTYPE_STRING:
      return r.GetString(message, &field);
    default:
      return "?";
  }
}

// The message's scalar fields, one "name  value" line each, in declaration order.
void PrintTable(const google::protobuf::Message& message) {
  const google::protobuf::Descriptor& descriptor = *message.GetDescriptor();
  for (int i = 0; i < descriptor.field_count(); ++i) {
    const google::protobuf::FieldDescriptor& field = *descriptor.field(i);
    if (field.is_repeated()) continue;
    std::printf("  %-26s %s\n", field.name().c_str(), FieldValue(message, field).c_str());
  }
}

Status Print(const std::string& server, const std::string& kind,
             const google::protobuf::Message& message, bool json) {
  if (!json) {
    std::printf("%s %s\n", kind.c_str(), server.c_str());
    PrintTable(message);
    return Status::Ok();
  }
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  const auto status = google::protobuf::util::MessageToJsonString(message, &text, options);
  if (!status.ok()) return Internal("cannot print stats as JSON: " + status.ToString());
  std::printf("%s\n", text.c_str());
  return Status::Ok();
}

int RunStats(const StatsFlags& flags) {
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("stats", options.status());
  Client client(std::move(*options));
  int exit_code = 0;
  for (size_t i = 0; i < flags.connection.servers.size(); ++i) {
    const std::string& server = flags.connection.servers[i];
    StatusOr<v1::GetWorkerStatsResponse> worker = client.WorkerStats(i);
    Status printed;
    if (worker.ok()) {
      printed = Print(server, "worker", *worker, flags.json);
    } else if (worker.status().code() == StatusCode::kUnimplemented) {
      StatusOr<v1::GetStatsResponse> manager = client.ManagerStats(i);
      printed = manager.ok() ? Print(server, "manager", *manager, flags.json) : manager.status();
    } else {
      printed = worker.status();
    }
    if (!printed.ok()) exit_code = ReportError("stats " + server, printed);
  }
  return exit_code;
}

}  // namespace

void AddStatsCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<StatsFlags>();
  CLI::App* command = app.add_subcommand("stats", "a worker's or a manager's counters");
  AddConnectionFlags(command, &flags->connection);
  command->add_flag("--json", flags->json, "print the stats proto as JSON");
  command->callback([flags, exit_code] { *exit_code = RunStats(*flags); });
}

}  // namespace kvpool::cli
