// The bench's outputs from its report JSON: the targets the issue names (each with its
// value, target and whether it is met), report.json, one CSV per scenario, report.md
// (tables and conclusions in words), and a short summary for the terminal.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kvpool::bench {

// Adds report["targets"]: {name: {value, target, met, what}} for the numbers present.
void AddTargets(nlohmann::json& report);
// Writes report.json, the CSVs and report.md into `dir`.
void WriteReport(const std::string& dir, const nlohmann::json& report);
// A few lines for the terminal.
std::string Summary(const nlohmann::json& report);

}  // namespace kvpool::bench
