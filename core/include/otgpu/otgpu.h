// Umbrella header: everything a libotgpu user needs.
#pragma once

#include "otgpu/assignment.h"
#include "otgpu/config.h"
#include "otgpu/coupling.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"
#include "otgpu/minibatch.h"
#include "otgpu/sinkhorn.h"
#include "otgpu/sliced.h"
#include "otgpu/types.h"
