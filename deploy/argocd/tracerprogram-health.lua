-- Argo CD health check for bpfleet.dev/TracerProgram.
-- Reads the kstatus conditions the operator writes (api/src/program.rs,
-- operator/src/rollout/conditions.rs): Ready, Reconciling, Stalled, plus
-- Paused and Degraded, each with observedGeneration.
--   status older than the spec          -> Progressing
--   Stalled or Degraded True            -> Degraded   (rollout aborted, nodes failing)
--   Paused True                         -> Suspended  (canary pause, awaiting promotion)
--   Ready True                          -> Healthy
--   otherwise (Reconciling, no status)  -> Progressing
hs = {}
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      -- A condition written for an older spec says nothing about this one.
      if c.observedGeneration ~= nil and c.observedGeneration < generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if obj.status ~= nil and obj.status.message ~= nil and obj.status.message ~= "" then
    return obj.status.message
  end
  return fallback
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the bpfleet operator to observe the program"
  return hs
end
if obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the bpfleet operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(stalled, "Rollout stalled")
  return hs
end
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = message(degraded, "Program degraded")
  return hs
end
local paused = condition("Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = message(paused, "Rollout paused")
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Every selected node runs the current revision")
  return hs
end
local reconciling = condition("Reconciling")
hs.status = "Progressing"
hs.message = message(reconciling, "Waiting for the rollout")
return hs
