-- Argo CD health check for mlrollout.io/ModelDeployment (see docs/cli.md).
-- Healthy: the model the spec asks for serves all traffic.
-- Progressing: a canary is being judged, or the operator has not seen the spec yet.
-- Suspended: paused (a manual step pause or spec.controls.paused).
-- Degraded: rolled back, degraded (stable not ready, metrics unavailable) or invalid spec.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the mlrollout operator to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = obj.status.phase
local message = obj.status.message
if message == nil or message == "" then
  message = phase
end
if phase == "Healthy" then
  hs.status = "Healthy"
elseif phase == "Progressing" or phase == "Initializing" then
  hs.status = "Progressing"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "RolledBack" or phase == "Degraded" or phase == "InvalidSpec" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
hs.message = phase .. ": " .. message
return hs
