/** The top level of an InternVL chat config.json as the OpenGVLab releases write it (LLM and ViT added per test). */
export const topLevel = {
  architectures: ['InternVLChatModel'],
  auto_map: { AutoConfig: 'configuration_internvl_chat.InternVLChatConfig' },
  downsample_ratio: 0.5,
  dynamic_image_size: true,
  force_image_size: 448,
  max_dynamic_patch: 12,
  min_dynamic_patch: 1,
  model_type: 'internvl_chat',
  ps_version: 'v2',
  select_layer: -1,
  template: 'internvl2_5',
  torch_dtype: 'bfloat16',
  use_backbone_lora: 0,
  use_llm_lora: 0,
  use_thumbnail: true,
};
