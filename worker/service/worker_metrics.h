// The worker's observability: its Prometheus exposition (the names of
// shared/DESIGN.md: requests running and waiting, time to first token and
// inter-token latency histograms, preemptions, token counters) and the load it
// reports to the manager with each heartbeat for the node's dashboard. Reads the
// scheduler's atomic counters only; never touches the engine or the pool.
#pragma once

#include <string>

#include "kvpool/v1/manager.pb.h"
#include "service/manager_link.h"
#include "service/scheduler.h"

namespace kvpool::worker {

// The whole /metrics body (text format 0.0.4).
std::string RenderWorkerMetrics(const Scheduler& scheduler, const ManagerLink& link);

// The counters the manager's dashboard shows, as of now.
void FillWorkerLoad(const WorkerCounters& counters, v1::WorkerLoad* load);

}  // namespace kvpool::worker
