# CUDA kernels: the pybind11 module fastrnn._cuda, plus fastrnn._cuda_emu, the same
# kernel code run on the CPU so that machines without a GPU can test it.
# Included by the top-level CMakeLists.txt after enable_language(CUDA).
#
# No torch headers: kernels take raw pointers and a stream, so one build serves every
# torch version. cudart is linked statically so the module imports without a driver.

set(FASTRNN_CUDA_DIR ${CMAKE_CURRENT_LIST_DIR})

pybind11_add_module(_cuda MODULE
  ${FASTRNN_CUDA_DIR}/bindings_cuda.cpp
  ${FASTRNN_CUDA_DIR}/lstm.cu
  ${FASTRNN_CUDA_DIR}/gru.cu
  ${FASTRNN_CUDA_DIR}/rnn.cu)
target_include_directories(_cuda PRIVATE ${FASTRNN_CUDA_DIR})
set_target_properties(_cuda PROPERTIES
  CUDA_RUNTIME_LIBRARY Static
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON)
target_compile_options(_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xcompiler=-fvisibility=hidden>)
target_link_libraries(_cuda PRIVATE CUDA::cudart_static)
install(TARGETS _cuda LIBRARY DESTINATION fastrnn)

# Host-only; needs no CUDA at all (FASTRNN_CUDA_EMU=OFF to skip it).
option(FASTRNN_CUDA_EMU "Build fastrnn._cuda_emu (CUDA kernel code run on the CPU, for tests)" ON)
if(FASTRNN_CUDA_EMU)
  pybind11_add_module(_cuda_emu MODULE ${FASTRNN_CUDA_DIR}/emu.cpp)
  target_include_directories(_cuda_emu PRIVATE ${FASTRNN_CUDA_DIR})
  target_compile_options(_cuda_emu PRIVATE -O2)
  install(TARGETS _cuda_emu LIBRARY DESTINATION fastrnn)
endif()
